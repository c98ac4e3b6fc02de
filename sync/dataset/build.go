package dataset

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Layout constants of a LeRobot v3.0 dataset (LEROBOT_V3.md §2).
const (
	CodebaseVersion = "v3.0"
	chunksSize      = 1000
	dataFileMB      = 100
	videoFileMB     = 200
	dataPath        = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
	videoPath       = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
)

// Options configure one build.
type Options struct {
	Out     string
	Mapping *Mapping
	// Version is the episoded version written to meta/info.json.
	Version string
	// Quality, if "ok", takes only episodes whose verdict is ok.
	Quality string
	// Progress, if set, is called before the first episode and after each
	// one, from Build's goroutine.
	Progress func(Progress)
	Logger   *slog.Logger
}

// Progress says how far a build is.
type Progress struct {
	Done, Total int // source episodes
	Rows        int // rows made so far
}

// Summary reports what a build did.
type Summary struct {
	Listed, Added, AlreadyPresent, Filtered, Dropped int
	// Episodes and Rows are the dataset's totals after the build.
	Episodes, Rows int
	NewRows        int
	// MissingRows had a required feature without a sample within
	// tolerance; FilledRows were filled from the previous row; DroppedRows
	// were left out (split, or before the first complete row).
	MissingRows, FilledRows, DroppedRows int
	// RepeatedFrames were shown on more than one row; DroppedFrames were
	// between the first and last frame used but shown on no row;
	// SkippedFrames came before a camera's first keyframe.
	RepeatedFrames, DroppedFrames, SkippedFrames int
	Remuxed, Reencoded                           int
	DroppedEpisodes                              []string
	Warnings                                     []string
}

// String renders the summary for a terminal.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "episodes: %d added, %d already present, %d filtered out, %d dropped (dataset now %d episodes, %d rows)\n",
		s.Added, s.AlreadyPresent, s.Filtered, s.Dropped, s.Episodes, s.Rows)
	fmt.Fprintf(&b, "rows:     %d new; %d missing a feature within tolerance (%d filled from the previous row, %d left out)\n",
		s.NewRows, s.MissingRows, s.FilledRows, s.DroppedRows)
	fmt.Fprintf(&b, "frames:   %d repeated, %d dropped, %d before the first keyframe skipped\n", s.RepeatedFrames, s.DroppedFrames, s.SkippedFrames)
	fmt.Fprintf(&b, "video:    %d camera episodes remuxed, %d re-encoded\n", s.Remuxed, s.Reencoded)
	for _, d := range s.DroppedEpisodes {
		fmt.Fprintf(&b, "dropped:  %s\n", d)
	}
	for _, w := range s.Warnings {
		fmt.Fprintf(&b, "warning:  %s\n", w)
	}
	return b.String()
}

// epRec is one dataset episode.
type epRec struct {
	index    int
	length   int
	task     string
	id       string
	part     int64
	quality  string
	coverage float64
	// streamCov is the lowest coverage the recorder reported for the
	// mapped streams (samples over expected), -1 when it reported none.
	streamCov float64
	bound     float64
	stats     map[string]featStats
	// video location per camera key, filled when written.
	vchunk, vfile map[string]int64
	vfrom, vto    map[string]float64
	dchunk, dfile int64
	from          int64 // global index of the first row
	segs          map[string]*videoSeg
}

// camFile is one camera MP4 being assembled.
type camFile struct {
	chunk, file int
	codecKey    string
	seg         *videoSeg // codec, name, size of the file
	samples     []vsample
	bytes       int64
	dirty       bool
}

type builder struct {
	o     Options
	m     *Mapping
	lay   *layout
	feats []feature
	tasks []string
	eps   []*epRec
	// rows are the data rows from global index rowBase on: those of the
	// data file being filled (the existing dataset's last file, the only
	// one that can grow, when appending) and of the episode being placed.
	// Finished files are staged and leave memory; earlier existing files
	// are neither read nor rewritten.
	rows    []map[string]any
	rowBase int64
	// The data file being filled: its index, its rows so far, whether it
	// holds a new episode; staged are finished files written to the
	// temporary directory (temp path, final path), moved in place last.
	dfFile  int
	dfIn    int
	dfDirty bool
	staged  [][2]string
	files   map[string][]*camFile // per camera key; only the last is loaded
	info    map[string]any        // existing info.json
	sources []string
	sum     Summary
	ffmpeg  string
	codec   string // re-encode codec
	tmp     string
	// closers release spool files and MP4s read lazily, after writing.
	closers []func() error
}

// feature is one entry of info.json's features.
type feature struct {
	key   string
	dtype string
	shape []int
	names []string
	col   colType
	video bool
}

// Build writes (or appends to) the LeRobot v3.0 dataset in o.Out from the
// episodes src lists.
func Build(ctx context.Context, src Source, o Options) (Summary, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	b := &builder{o: o, m: o.Mapping, files: map[string][]*camFile{}}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return b.sum, err
	}
	tmp, err := os.MkdirTemp(o.Out, ".build-")
	if err != nil {
		return b.sum, err
	}
	b.tmp = tmp
	defer func() {
		for _, c := range b.closers {
			c()
		}
		os.RemoveAll(tmp)
	}()
	if p, err := ffmpegPath(); err == nil {
		b.ffmpeg = p
	}
	b.codec = b.m.Codec
	if b.codec == "auto" {
		b.codec = "h264"
		if b.ffmpeg != "" && hasSVTAV1(b.ffmpeg) {
			b.codec = "av1"
		}
	}
	if err := b.load(); err != nil {
		return b.sum, err
	}
	refs, err := src.List(ctx)
	if err != nil {
		return b.sum, err
	}
	sortRefs(refs)
	b.sum.Listed = len(refs)
	have := map[string]bool{}
	for _, e := range b.eps {
		have[e.id] = true
	}
	var toAdd []Ref
	for _, r := range refs {
		switch {
		case have[r.ID]:
			b.sum.AlreadyPresent++
		default:
			toAdd = append(toAdd, r)
			have[r.ID] = true
		}
	}
	b.progress(0, len(toAdd))
	for i, r := range toAdd {
		if err := ctx.Err(); err != nil {
			return b.sum, err
		}
		if err := b.addEpisode(ctx, r); err != nil {
			return b.sum, err
		}
		b.progress(i+1, len(toAdd))
	}
	b.sum.Episodes, b.sum.Rows = len(b.eps), int(b.nrows())
	if len(b.eps) == 0 {
		b.sum.Warnings = append(b.sum.Warnings, "no episode to build from; nothing written")
		return b.sum, nil
	}
	if b.sum.Added == 0 {
		return b.sum, nil // an existing dataset, nothing new: left as it is
	}
	if err := b.write(); err != nil {
		return b.sum, err
	}
	b.sum.Episodes, b.sum.Rows = len(b.eps), int(b.nrows())
	return b.sum, nil
}

func (b *builder) progress(done, total int) {
	if b.o.Progress != nil {
		b.o.Progress(Progress{Done: done, Total: total, Rows: b.sum.NewRows})
	}
}

func sanitize(topic string) string {
	return strings.NewReplacer("/", ".", " ", "_").Replace(strings.Trim(topic, "/"))
}

// makeLayout fixes the feature layout from the first episode.
func (b *builder) makeLayout(ep *Episode) error {
	lay := &layout{}
	seen := map[string]bool{}
	for _, f := range b.m.State {
		s := extract(ep, f, 0)
		if s.dim == 0 {
			return fmt.Errorf("state field %s %s: no message has it; cannot tell its size", f.Topic, f.Path)
		}
		lay.stateDims = append(lay.stateDims, s.dim)
		names := fieldNames(f, s.dim)
		if len(names) != s.dim {
			return fmt.Errorf("state field %s %s: %d names for %d values", f.Topic, f.Path, len(names), s.dim)
		}
		lay.stateNames = append(lay.stateNames, names...)
		if !seen[f.Topic] {
			seen[f.Topic] = true
			lay.offsetTopics = append(lay.offsetTopics, f.Topic)
		}
	}
	if b.m.Action.NextState {
		lay.actNames = slices.Clone(lay.stateNames)
	}
	for _, f := range b.m.Action.Fields {
		s := extract(ep, f, 0)
		if s.dim == 0 {
			return fmt.Errorf("action field %s %s: no message has it; cannot tell its size", f.Topic, f.Path)
		}
		lay.actDims = append(lay.actDims, s.dim)
		names := fieldNames(f, s.dim)
		if len(names) != s.dim {
			return fmt.Errorf("action field %s %s: %d names for %d values", f.Topic, f.Path, len(names), s.dim)
		}
		lay.actNames = append(lay.actNames, names...)
		if !seen[f.Topic] {
			seen[f.Topic] = true
			lay.offsetTopics = append(lay.offsetTopics, f.Topic)
		}
	}
	b.lay = lay
	b.feats = b.features()
	return nil
}

// features lists the dataset's features in a fixed order (video shapes
// are filled in when info.json is written).
func (b *builder) features() []feature {
	one := []int{1}
	fs := []feature{
		{key: "timestamp", dtype: "float32", shape: one, col: tFloat32},
		{key: "frame_index", dtype: "int64", shape: one, col: tInt64},
		{key: "episode_index", dtype: "int64", shape: one, col: tInt64},
		{key: "index", dtype: "int64", shape: one, col: tInt64},
		{key: "task_index", dtype: "int64", shape: one, col: tInt64},
		{key: "observation.state", dtype: "float32", shape: []int{len(b.lay.stateNames)}, names: b.lay.stateNames, col: tListFloat32},
		{key: "action", dtype: "float32", shape: []int{len(b.lay.actNames)}, names: b.lay.actNames, col: tListFloat32},
	}
	for _, t := range b.lay.offsetTopics {
		fs = append(fs, feature{key: "fidelity.offset_ms." + sanitize(t), dtype: "float32", shape: one, col: tFloat32})
	}
	for _, c := range b.m.Cameras {
		fs = append(fs, feature{key: "fidelity.offset_ms.images." + c.Name, dtype: "float32", shape: one, col: tFloat32})
	}
	for _, c := range b.m.Cameras {
		fs = append(fs, feature{key: "fidelity.repeated.images." + c.Name, dtype: "bool", shape: one, col: tBool})
	}
	for _, c := range b.m.Cameras {
		fs = append(fs, feature{key: CameraKey(c.Name), dtype: "video", shape: []int{0, 0, 3}, names: []string{"height", "width", "channels"}, video: true})
	}
	return fs
}

// addEpisode fetches, checks, aligns and converts one source episode.
func (b *builder) addEpisode(ctx context.Context, r Ref) error {
	if b.o.Quality != "" && r.Quality != "" && r.Quality != b.o.Quality {
		b.sum.Filtered++ // known from the listing: not even fetched
		return nil
	}
	p, err := r.fetch(ctx, b.tmp)
	if err != nil {
		return err
	}
	defer os.Remove(p)
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	topics, cams := map[string][]string{}, map[string]bool{}
	for _, fl := range append(slices.Clone(b.m.State), b.m.Action.Fields...) {
		if !slices.Contains(topics[fl.Topic], fl.Path) {
			topics[fl.Topic] = append(topics[fl.Topic], fl.Path)
		}
	}
	for _, c := range b.m.Cameras {
		cams[c.Stream] = true
	}
	ep, err := ReadEpisode(f, topics, cams, b.tmp)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", r.Where, err)
	}
	// The spooled frames are read again when the camera files are written.
	b.closers = append(b.closers, ep.Close)
	if ep.QualityStatus == "" {
		ep.QualityStatus = r.Quality
	}
	if b.o.Quality != "" && ep.QualityStatus != b.o.Quality {
		b.sum.Filtered++
		return nil
	}
	for _, tr := range ep.Video {
		b.sum.SkippedFrames += tr.Skipped
	}
	if b.lay == nil {
		if err := b.makeLayout(ep); err != nil {
			// The layout comes from the next episode that has every field.
			b.sum.Dropped++
			b.sum.DroppedEpisodes = append(b.sum.DroppedEpisodes, fmt.Sprintf("%s: %v", r.ID, err))
			return nil
		}
	}
	res, err := align(ep, b.m, b.lay)
	if err != nil {
		return fmt.Errorf("episode %s: %w", r.ID, err)
	}
	b.sum.MissingRows += res.missingRows
	b.sum.FilledRows += res.filledRows
	b.sum.DroppedRows += res.droppedRows
	if res.dropped {
		b.sum.Dropped++
		b.sum.DroppedEpisodes = append(b.sum.DroppedEpisodes, fmt.Sprintf("%s: %s", r.ID, res.reason))
		return nil
	}
	task := b.m.Task
	if task == "" {
		task = ep.Manifest.Task
	}
	if task == "" {
		task = "unspecified"
	}
	// The alignment bound and the recorder's coverage of the streams the
	// mapping uses (telemetry streams are found by their topic).
	used := map[string]bool{}
	for _, c := range b.m.Cameras {
		used[c.Stream] = true
	}
	for _, fl := range append(slices.Clone(b.m.State), b.m.Action.Fields...) {
		used[fl.Topic] = true
		for _, si := range ep.Manifest.Streams {
			if si.Topic == fl.Topic {
				used[si.Stream] = true
			}
		}
	}
	var bound float64
	streamCov := -1.0
	for _, q := range ep.Quality {
		if !used[q.Stream] {
			continue
		}
		bound = max(bound, q.AlignmentErrorBoundMs)
		if streamCov < 0 || q.Coverage < streamCov {
			streamCov = q.Coverage
		}
	}
	quality := ep.QualityStatus
	if quality == "" {
		quality = "unknown"
	}
	for si, sg := range res.segments {
		if secs := float64(sg.n) / float64(b.m.FPS); secs > 2048 {
			b.sum.Warnings = append(b.sum.Warnings, fmt.Sprintf("episode %s lasts %.0f s: LeRobot's float32 timestamps are coarser than its 0.1 ms tolerance past 2048 s", r.ID, secs))
		}
		rec := &epRec{index: len(b.eps), length: sg.n, task: task, id: r.ID, part: int64(si), quality: quality,
			coverage: sg.coverage, streamCov: streamCov, bound: bound, stats: map[string]featStats{}, segs: map[string]*videoSeg{}}
		if err := b.addSegment(ctx, rec, res, sg); err != nil {
			return fmt.Errorf("episode %s: %w", r.ID, err)
		}
		b.eps = append(b.eps, rec)
		if err := b.place(rec); err != nil {
			return err
		}
	}
	b.sum.Added++
	b.sources = append(b.sources, r.ID)
	return nil
}

func (b *builder) taskIndex(t string) int64 {
	if i := slices.Index(b.tasks, t); i >= 0 {
		return int64(i)
	}
	b.tasks = append(b.tasks, t)
	return int64(len(b.tasks) - 1)
}

func (b *builder) addSegment(ctx context.Context, rec *epRec, res *gridResult, sg segment) error {
	fps := b.m.FPS
	ti := b.taskIndex(rec.task)
	rec.from = b.nrows()
	sg = b.trimForRemux(res, sg)
	rec.length = sg.n
	// Video first: it can fail (no ffmpeg) before any row is added.
	for ci, c := range b.m.Cameras {
		key := CameraKey(c.Name)
		cs := res.cams[ci]
		frames := sg.frames[ci]
		used := map[int]bool{}
		lo, hi := frames[0], frames[len(frames)-1]
		for k, p := range frames {
			used[p] = true
			if sg.repeated[ci][k] {
				b.sum.RepeatedFrames++
			}
		}
		b.sum.DroppedFrames += (hi - lo + 1) - len(used)
		sampled := map[int]bool{}
		for _, k := range sampleIndices(len(frames)) {
			sampled[k] = true
		}
		hist := make([][256]int64, 3)
		var nsampled int64
		var seg *videoSeg
		if dlo, dhi, ok := cs.remuxable(frames); ok {
			presOf := map[int]int{}
			for k, p := range frames {
				presOf[cs.dec[p]] = k
			}
			s, err := remuxSeg(cs, dlo, dhi, presOf)
			if err == nil {
				seg = s
				b.sum.Remuxed++
				if b.ffmpeg != "" {
					want := map[int][]int{}
					for k := range sampled {
						want[frames[k]] = append(want[frames[k]], k)
					}
					err := decodeFrames(ctx, b.ffmpeg, cs.track, seg.w, seg.h, func(p int, yuv []byte) error {
						for range want[p] {
							addYUV(hist, yuv, seg.w, seg.h)
							nsampled++
						}
						return nil
					})
					if err != nil {
						// The video itself is fine (copied as is); only its
						// statistics are missing.
						b.sum.Warnings = append(b.sum.Warnings, fmt.Sprintf("episode %s camera %s: no video statistics: %v", rec.id, c.Stream, err))
						hist, nsampled = make([][256]int64, 3), 0
					}
				}
			}
		}
		if seg == nil {
			if b.ffmpeg == "" {
				return fmt.Errorf("camera %s: frames do not map one to one onto the %d fps grid, so they must be re-encoded: %w", c.Stream, fps, ErrNoFFmpeg)
			}
			// The picture size comes from the first keyframe's SPS.
			au, err := cs.track.AU(0)
			if err != nil {
				return err
			}
			_, params := toSample(cs.track.Codec, au)
			_, _, w, h, err := codecOf(cs.track.Codec, params)
			if err != nil {
				return fmt.Errorf("camera %s: %w", c.Stream, err)
			}
			s, err := reencodeSeg(ctx, b.ffmpeg, b.codec, fps, cs, frames, w, h, b.tmp, func(k int, yuv []byte) {
				if sampled[k] {
					addYUV(hist, yuv, w, h)
					nsampled++
				}
			})
			if err != nil {
				return fmt.Errorf("camera %s: re-encode: %w", c.Stream, err)
			}
			seg = s
			b.closers = append(b.closers, s.file.Close)
			b.sum.Reencoded++
		}
		rec.segs[key] = seg
		if nsampled > 0 {
			rec.stats[key] = histStats(hist, nsampled)
		}
	}
	// Rows.
	nOff := len(b.lay.offsetTopics)
	for k := 0; k < sg.n; k++ {
		row := map[string]any{
			"timestamp":         float32(float64(k) / float64(fps)),
			"frame_index":       int64(k),
			"episode_index":     int64(rec.index),
			"index":             b.nrows(),
			"task_index":        ti,
			"observation.state": sg.state[k],
			"action":            sg.act[k],
		}
		for i, t := range b.lay.offsetTopics {
			row["fidelity.offset_ms."+sanitize(t)] = sg.offsets[i][k]
		}
		for ci, c := range b.m.Cameras {
			row["fidelity.offset_ms.images."+c.Name] = sg.offsets[nOff+ci][k]
			row["fidelity.repeated.images."+c.Name] = sg.repeated[ci][k]
		}
		b.rows = append(b.rows, row)
	}
	b.sum.NewRows += sg.n
	// Numeric statistics over this episode's rows.
	for _, f := range b.feats {
		if f.video {
			continue
		}
		rows := make([][]float64, sg.n)
		for k := range rows {
			rows[k] = numeric(b.rows[int(rec.from-b.rowBase)+k][f.key])
		}
		rec.stats[f.key] = computeStats(rows, f.shape[0])
	}
	return nil
}

// trimForRemux drops up to maxTrim trailing rows when that lets a camera
// be copied rather than re-encoded: with B-frames, the frames of the last
// rows can be split in decode order by a frame that belongs to the row
// after the segment's end.
func (b *builder) trimForRemux(res *gridResult, sg segment) segment {
	const maxTrim = 8
	n := sg.n
	for ci, cs := range res.cams {
		if _, _, ok := cs.remuxable(sg.frames[ci]); ok {
			continue
		}
		for k := sg.n - 1; k >= max(1, sg.n-maxTrim); k-- {
			if _, _, ok := cs.remuxable(sg.frames[ci][:k]); ok {
				n = min(n, k)
				break
			}
		}
	}
	if n == sg.n {
		return sg
	}
	b.sum.DroppedRows += sg.n - n
	sg.n = n
	sg.state, sg.act = sg.state[:n], sg.act[:n]
	for i := range sg.offsets {
		sg.offsets[i] = sg.offsets[i][:n]
	}
	for i := range sg.frames {
		sg.frames[i], sg.repeated[i] = sg.frames[i][:n], sg.repeated[i][:n]
	}
	return sg
}

func numeric(v any) []float64 {
	switch x := v.(type) {
	case float32:
		return []float64{float64(x)}
	case float64:
		return []float64{x}
	case int64:
		return []float64{float64(x)}
	case bool:
		if x {
			return []float64{1}
		}
		return []float64{0}
	case []float32:
		out := make([]float64, len(x))
		for i, e := range x {
			out[i] = float64(e)
		}
		return out
	}
	return nil
}

// place assigns a new episode (its rows just appended) to a data file:
// whole episodes per file, a new file past ~100 MB (estimated from the row
// width, so the split depends only on the rows). A finished file is
// written to the temporary directory and its rows leave memory.
func (b *builder) place(e *epRec) error {
	rowBytes := 4 + 4*8 + 4*(len(b.lay.stateNames)+len(b.lay.actNames)) + 5*len(b.feats)
	perFile := max(1, dataFileBytes/rowBytes)
	if b.dfIn > 0 && b.dfIn+e.length > perFile {
		if err := b.flushData(len(b.rows) - e.length); err != nil {
			return err
		}
		b.dfFile++
		b.dfIn = 0
	}
	c, f := chunkFile(b.dfFile)
	e.dchunk, e.dfile = int64(c), int64(f)
	b.dfIn += e.length
	b.dfDirty = true
	return nil
}

// flushData stages the current data file, made of the first n rows in
// memory, if it holds a new episode, and drops those rows from memory.
func (b *builder) flushData(n int) error {
	if b.dfDirty && n > 0 {
		var cols []column
		for _, f := range b.feats {
			if !f.video {
				cols = append(cols, column{f.key, f.col})
			}
		}
		tmp := filepath.Join(b.tmp, fmt.Sprintf("data-%d.parquet", b.dfFile))
		if err := writeParquet(tmp, cols, b.rows[:n], nil); err != nil {
			return err
		}
		b.staged = append(b.staged, [2]string{tmp, b.dataFile(b.dfFile)})
	}
	b.rows = slices.Clone(b.rows[n:])
	b.rowBase += int64(n)
	b.dfDirty = false
	return nil
}

// dataFileBytes is where a data file rolls over (estimated from the row
// width); a variable so that tests can make several files.
var dataFileBytes = dataFileMB << 20

// nrows is the dataset's row count so far.
func (b *builder) nrows() int64 { return b.rowBase + int64(len(b.rows)) }

func chunkFile(i int) (int, int) { return i / chunksSize, i % chunksSize }

func (b *builder) dataFile(i int) string {
	c, f := chunkFile(i)
	return filepath.Join(b.o.Out, "data", fmt.Sprintf("chunk-%03d", c), fmt.Sprintf("file-%03d.parquet", f))
}

func (b *builder) videoFile(key string, i int) string {
	c, f := chunkFile(i)
	return filepath.Join(b.o.Out, "videos", key, fmt.Sprintf("chunk-%03d", c), fmt.Sprintf("file-%03d.mp4", f))
}

// write writes every file of the dataset that changed.
func (b *builder) write() error {
	fps := b.m.FPS
	// Video: append each new episode to its camera's last file, or start
	// a new file when the parameter sets differ or the file is full.
	vsize := map[string][2]int{}
	vcodec := map[string]string{}
	for _, e := range b.eps {
		for key, seg := range e.segs {
			files := b.files[key]
			var cf *camFile
			if n := len(files); n > 0 {
				cf = files[n-1]
			}
			if cf != nil && cf.seg == nil {
				if err := b.loadCamFile(key, cf); err != nil {
					return err
				}
			}
			if cf == nil || cf.codecKey != seg.codecKey || cf.bytes+seg.bytes > videoFileMB<<20 {
				idx := 0
				if cf != nil {
					idx = cf.chunk*chunksSize + cf.file + 1
				}
				c, f := chunkFile(idx)
				cf = &camFile{chunk: c, file: f, codecKey: seg.codecKey, seg: seg}
				b.files[key] = append(b.files[key], cf)
			}
			from := float64(len(cf.samples)) / float64(fps)
			cf.samples = append(cf.samples, seg.samples...)
			cf.bytes += seg.bytes
			cf.dirty = true
			if e.vchunk == nil {
				e.vchunk, e.vfile, e.vfrom, e.vto = map[string]int64{}, map[string]int64{}, map[string]float64{}, map[string]float64{}
			}
			e.vchunk[key], e.vfile[key] = int64(cf.chunk), int64(cf.file)
			e.vfrom[key], e.vto[key] = from, from+float64(e.length)/float64(fps)
		}
	}
	for key, files := range b.files {
		for _, cf := range files {
			if cf.seg != nil {
				vsize[key] = [2]int{cf.seg.h, cf.seg.w}
				vcodec[key] = cf.seg.name
			}
			if !cf.dirty {
				continue
			}
			if err := writeMP4(b.videoFile(key, cf.chunk*chunksSize+cf.file), fps, cf.seg.codec, cf.samples); err != nil {
				return err
			}
		}
	}
	// Data files: the current one, then every one staged so far.
	if err := b.flushData(len(b.rows)); err != nil {
		return err
	}
	for _, f := range b.staged {
		if err := os.MkdirAll(filepath.Dir(f[1]), 0o755); err != nil {
			return err
		}
		if err := os.Rename(f[0], f[1]); err != nil {
			return err
		}
	}
	if err := b.writeEpisodes(); err != nil {
		return err
	}
	if err := b.writeTasks(); err != nil {
		return err
	}
	if err := b.writeStats(); err != nil {
		return err
	}
	return b.writeInfo(vsize, vcodec)
}

func (b *builder) episodeColumns() []column {
	cols := []column{
		{"episode_index", tInt64}, {"length", tInt64}, {"tasks", tListString},
		{"data/chunk_index", tInt64}, {"data/file_index", tInt64},
		{"dataset_from_index", tInt64}, {"dataset_to_index", tInt64},
		{"meta/episodes/chunk_index", tInt64}, {"meta/episodes/file_index", tInt64},
		{"episoded/id", tString}, {"episoded/part", tInt64}, {"episoded/quality", tString},
		{"episoded/coverage", tFloat64}, {"episoded/stream_coverage", tFloat64}, {"episoded/alignment_bound_ms", tFloat64},
	}
	for _, c := range b.m.Cameras {
		k := "videos/" + CameraKey(c.Name) + "/"
		cols = append(cols, column{k + "chunk_index", tInt64}, column{k + "file_index", tInt64},
			column{k + "from_timestamp", tFloat64}, column{k + "to_timestamp", tFloat64})
	}
	for _, f := range b.feats {
		for _, s := range statNames {
			cols = append(cols, column{"stats/" + f.key + "/" + s, tListFloat64})
		}
	}
	return cols
}

func (b *builder) writeEpisodes() error {
	var rows []map[string]any
	for _, e := range b.eps {
		r := map[string]any{
			"episode_index": int64(e.index), "length": int64(e.length), "tasks": []string{e.task},
			"data/chunk_index": e.dchunk, "data/file_index": e.dfile,
			"dataset_from_index": e.from, "dataset_to_index": e.from + int64(e.length),
			"meta/episodes/chunk_index": int64(0), "meta/episodes/file_index": int64(0),
			"episoded/id": e.id, "episoded/part": e.part, "episoded/quality": e.quality,
			"episoded/coverage": e.coverage, "episoded/stream_coverage": e.streamCov, "episoded/alignment_bound_ms": e.bound,
		}
		for _, c := range b.m.Cameras {
			key := CameraKey(c.Name)
			k := "videos/" + key + "/"
			r[k+"chunk_index"], r[k+"file_index"] = e.vchunk[key], e.vfile[key]
			r[k+"from_timestamp"], r[k+"to_timestamp"] = e.vfrom[key], e.vto[key]
		}
		for _, f := range b.feats {
			st, ok := e.stats[f.key]
			for _, s := range statNames {
				v := []float64{}
				if ok {
					v = st.values(s)
				}
				r["stats/"+f.key+"/"+s] = v
			}
		}
		rows = append(rows, r)
	}
	return writeParquet(filepath.Join(b.o.Out, "meta", "episodes", "chunk-000", "file-000.parquet"), b.episodeColumns(), rows, nil)
}

func (b *builder) writeTasks() error {
	var rows []map[string]any
	for i, t := range b.tasks {
		rows = append(rows, map[string]any{"task_index": int64(i), "task": t})
	}
	pandas := `{"index_columns": ["task"], "column_indexes": [{"name": null, "field_name": null, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}], "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": null}, {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": null}], "creator": {"library": "episoded", "version": "1"}, "pandas_version": "2.2.3"}`
	return writeParquet(filepath.Join(b.o.Out, "meta", "tasks.parquet"), []column{{"task_index", tInt64}, {"task", tString}}, rows,
		map[string]string{"pandas": pandas})
}

func (b *builder) writeStats() error {
	out := map[string]any{}
	for _, f := range b.feats {
		var all []featStats
		for _, e := range b.eps {
			if s, ok := e.stats[f.key]; ok && len(s.Mean) > 0 {
				all = append(all, s)
			}
		}
		if len(all) == 0 {
			if f.video {
				b.sum.Warnings = append(b.sum.Warnings, fmt.Sprintf("no statistics for %s: ffmpeg is needed to decode sampled frames", f.key))
			}
			continue
		}
		out[f.key] = aggregate(all).json(f.video)
	}
	return writeJSON(filepath.Join(b.o.Out, "meta", "stats.json"), out)
}

func (b *builder) writeInfo(vsize map[string][2]int, vcodec map[string]string) error {
	feats := map[string]any{}
	for _, f := range b.feats {
		m := map[string]any{"dtype": f.dtype, "shape": f.shape, "names": nil}
		if f.names != nil {
			m["names"] = f.names
		}
		if f.video {
			sz, ok := vsize[f.key]
			if !ok {
				sz, _ = b.existingSize(f.key)
			}
			codec := vcodec[f.key]
			if codec == "" {
				codec = b.existingCodec(f.key)
			}
			m["shape"] = []int{sz[0], sz[1], 3}
			m["info"] = map[string]any{
				"video.height": sz[0], "video.width": sz[1], "video.codec": codec, "video.pix_fmt": "yuv420p",
				"video.is_depth_map": false, "video.fps": b.m.FPS, "video.channels": 3, "has_audio": false,
			}
		}
		feats[f.key] = m
	}
	var vp any
	if len(b.m.Cameras) > 0 {
		vp = videoPath
	}
	sources := []string{}
	seen := map[string]bool{}
	for _, e := range b.eps {
		if !seen[e.id] {
			seen[e.id] = true
			sources = append(sources, e.id)
		}
	}
	info := map[string]any{
		"codebase_version": CodebaseVersion, "robot_type": nilIfEmpty(b.m.RobotType),
		"total_episodes": len(b.eps), "total_frames": b.nrows(), "total_tasks": len(b.tasks),
		"chunks_size": chunksSize, "data_files_size_in_mb": dataFileMB, "video_files_size_in_mb": videoFileMB,
		"fps": b.m.FPS, "splits": map[string]string{"train": fmt.Sprintf("0:%d", len(b.eps))},
		"data_path": dataPath, "video_path": vp, "features": feats,
		"episoded": map[string]any{"version": b.o.Version, "source_episodes": sources,
			"layout": map[string]any{"state_dims": nonNil(b.lay.stateDims), "action_dims": nonNil(b.lay.actDims), "offset_topics": b.lay.offsetTopics}},
	}
	return writeJSON(filepath.Join(b.o.Out, "meta", "info.json"), info)
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func writeJSON(path string, v any) error {
	bs, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(bs, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func nonNil(v []int) []int {
	if v == nil {
		return []int{}
	}
	return v
}

func (b *builder) existingCodec(key string) string {
	feats, _ := b.info["features"].(map[string]any)
	f, _ := feats[key].(map[string]any)
	in, _ := f["info"].(map[string]any)
	c, _ := in["video.codec"].(string)
	return c
}
