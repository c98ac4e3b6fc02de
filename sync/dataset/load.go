package dataset

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// load reads an existing dataset in o.Out, so that a build appends to it.
// Everything a fresh build of the same episodes would write is recovered:
// rows, episodes with their statistics, tasks, and the camera files.
func (b *builder) load() error {
	raw, err := os.ReadFile(filepath.Join(b.o.Out, "meta", "info.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read existing dataset: %w", err)
	}
	var info struct {
		Version  string `json:"codebase_version"`
		FPS      int    `json:"fps"`
		Features map[string]struct {
			Shape []int    `json:"shape"`
			Names []string `json:"names"`
		} `json:"features"`
		Episoded struct {
			Layout *struct {
				StateDims    []int    `json:"state_dims"`
				ActionDims   []int    `json:"action_dims"`
				OffsetTopics []string `json:"offset_topics"`
			} `json:"layout"`
		} `json:"episoded"`
	}
	if err := json.Unmarshal(raw, &info); err != nil {
		return fmt.Errorf("read existing dataset: meta/info.json: %w", err)
	}
	if err := json.Unmarshal(raw, &b.info); err != nil {
		return err
	}
	if info.Version != CodebaseVersion {
		return fmt.Errorf("existing dataset in %s is %s, not %s", b.o.Out, info.Version, CodebaseVersion)
	}
	if info.FPS != b.m.FPS {
		return fmt.Errorf("existing dataset in %s has fps %d, the mapping says %d", b.o.Out, info.FPS, b.m.FPS)
	}
	l := info.Episoded.Layout
	if l == nil {
		return fmt.Errorf("existing dataset in %s was not written by episoded (no episoded.layout in meta/info.json); cannot append", b.o.Out)
	}
	b.lay = &layout{stateDims: l.StateDims, actDims: l.ActionDims, offsetTopics: l.OffsetTopics,
		stateNames: info.Features["observation.state"].Names, actNames: info.Features["action"].Names}
	b.feats = b.features()
	var want, got []string
	for _, f := range b.feats {
		want = append(want, f.key)
	}
	for k := range info.Features {
		got = append(got, k)
	}
	sort.Strings(want)
	sort.Strings(got)
	if !slices.Equal(want, got) || len(l.StateDims) != len(b.m.State) || len(l.ActionDims) != len(b.m.Action.Fields) {
		return fmt.Errorf("existing dataset in %s has features %s; this mapping makes %s", b.o.Out, strings.Join(got, ", "), strings.Join(want, ", "))
	}

	tasks, err := readParquet(filepath.Join(b.o.Out, "meta", "tasks.parquet"))
	if err != nil {
		return fmt.Errorf("read existing dataset: %w", err)
	}
	b.tasks = make([]string, len(tasks))
	for _, t := range tasks {
		i, _ := t["task_index"].(int64)
		if int(i) >= len(b.tasks) {
			return fmt.Errorf("read existing dataset: tasks.parquet: task_index %d out of range", i)
		}
		b.tasks[i], _ = t["task"].(string)
	}

	epFiles, _ := filepath.Glob(filepath.Join(b.o.Out, "meta", "episodes", "*", "*.parquet"))
	sort.Strings(epFiles)
	maxFile := map[string]int{}
	for _, p := range epFiles {
		rows, err := readParquet(p)
		if err != nil {
			return fmt.Errorf("read existing dataset: %w", err)
		}
		for _, r := range rows {
			e := &epRec{stats: map[string]featStats{}, vchunk: map[string]int64{}, vfile: map[string]int64{},
				vfrom: map[string]float64{}, vto: map[string]float64{}}
			i64 := func(k string) int64 { v, _ := r[k].(int64); return v }
			f64 := func(k string) float64 { v, _ := r[k].(float64); return v }
			str := func(k string) string { v, _ := r[k].(string); return v }
			e.index, e.length = int(i64("episode_index")), int(i64("length"))
			if ts, _ := r["tasks"].([]string); len(ts) > 0 {
				e.task = ts[0]
			}
			e.id, e.part, e.quality = str("episoded/id"), i64("episoded/part"), str("episoded/quality")
			e.coverage, e.streamCov, e.bound = f64("episoded/coverage"), f64("episoded/stream_coverage"), f64("episoded/alignment_bound_ms")
			e.from = i64("dataset_from_index")
			e.dchunk, e.dfile = i64("data/chunk_index"), i64("data/file_index")
			for _, c := range b.m.Cameras {
				key := CameraKey(c.Name)
				k := "videos/" + key + "/"
				e.vchunk[key], e.vfile[key] = i64(k+"chunk_index"), i64(k+"file_index")
				e.vfrom[key], e.vto[key] = f64(k+"from_timestamp"), f64(k+"to_timestamp")
				maxFile[key] = max(maxFile[key], int(e.vchunk[key])*chunksSize+int(e.vfile[key]))
			}
			for _, f := range b.feats {
				var st featStats
				have := false
				for _, s := range statNames {
					v, _ := r["stats/"+f.key+"/"+s].([]float64)
					if len(v) > 0 {
						have = true
					}
					st.set(s, v)
				}
				if have {
					e.stats[f.key] = st
				}
			}
			if e.index != len(b.eps) {
				return fmt.Errorf("read existing dataset: episode %d found at position %d", e.index, len(b.eps))
			}
			b.eps = append(b.eps, e)
		}
	}
	// Only the last data file can grow: read its rows, starting at its
	// first episode's index.
	if n := len(b.eps); n > 0 {
		last := b.eps[n-1]
		b.rowBase = last.from
		for i := n - 1; i >= 0 && b.eps[i].dchunk == last.dchunk && b.eps[i].dfile == last.dfile; i-- {
			b.rowBase = b.eps[i].from
		}
		p := b.dataFile(int(last.dchunk)*chunksSize + int(last.dfile))
		rows, err := readParquet(p)
		if err != nil {
			return fmt.Errorf("read existing dataset: %w", err)
		}
		b.rows = rows
		b.dfFile, b.dfIn = int(last.dchunk)*chunksSize+int(last.dfile), len(rows)
		if want := last.from + int64(last.length) - b.rowBase; int64(len(rows)) != want {
			return fmt.Errorf("read existing dataset: %s has %d rows, the episodes say %d", p, len(rows), want)
		}
		if len(rows) > 0 {
			if i, _ := rows[0]["index"].(int64); i != b.rowBase {
				return fmt.Errorf("read existing dataset: %s starts at index %d, the episodes say %d", p, i, b.rowBase)
			}
		}
	}
	if len(b.eps) > 0 {
		for _, c := range b.m.Cameras {
			key := CameraKey(c.Name)
			for i := 0; i <= maxFile[key]; i++ {
				ch, f := chunkFile(i)
				b.files[key] = append(b.files[key], &camFile{chunk: ch, file: f})
			}
		}
	}
	return nil
}

// loadCamFile reads an existing camera file back so that episodes can be
// appended to it.
func (b *builder) loadCamFile(key string, cf *camFile) error {
	p := b.videoFile(key, cf.chunk*chunksSize+cf.file)
	seg, err := readMP4Seg(p, "")
	if err != nil {
		return fmt.Errorf("read existing dataset: %w", err)
	}
	b.closers = append(b.closers, seg.file.Close)
	seg.name = codecName(seg.codec)
	if sz, ok := b.existingSize(key); ok {
		seg.h, seg.w = sz[0], sz[1]
	}
	cf.seg, cf.samples, cf.bytes, cf.codecKey = seg, seg.samples, seg.bytes, seg.codecKey
	return nil
}

func (b *builder) existingSize(key string) ([2]int, bool) {
	feats, _ := b.info["features"].(map[string]any)
	f, _ := feats[key].(map[string]any)
	sh, _ := f["shape"].([]any)
	if len(sh) != 3 {
		return [2]int{}, false
	}
	h, _ := sh[0].(float64)
	w, _ := sh[1].(float64)
	return [2]int{int(h), int(w)}, true
}
