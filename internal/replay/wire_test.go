package replay

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

const epID = "0193a1b2-0000-7000-8000-00000000000a"

func serveSamples(t *testing.T, src Source) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /v1/episodes/{id}/samples", SamplesHandler(src, testLogger(t)))
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts
}

// getSamples reads the samples stream of id with sel, at the path the
// replay command asks for (SamplesPath).
func getSamples(t *testing.T, ts *httptest.Server, id string, sel Selection) (Header, []sample.Sample) {
	t.Helper()
	u := ts.URL + SamplesPath(id, sel)
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", u, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != ContentType {
		t.Errorf("content type %q, want %q", ct, ContentType)
	}
	rd, err := NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var got []sample.Sample
	for s, err := range rd.Samples() {
		if err != nil {
			t.Fatalf("sample %d: %v", len(got), err)
		}
		got = append(got, s)
	}
	return rd.Header(), got
}

// The endpoint round-trips: every sample (payload, Seq, T, SrcT, RecvT,
// flags, loss counts) and every descriptor version arrive identical to
// what the store holds, in the store's merge order.
func TestSamplesEndpointRoundTrip(t *testing.T) {
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	te := buildEpisode(t, st, epID, t0, 2*time.Second, episode.Closed)
	// A second descriptor version of the camera, from the middle on.
	d2 := te.descs[sCam][0]
	d2.Params = [][]byte{append([]byte{}, te.params[0]...), {0x68, 0xce, 0x3c, 0x80}}
	d2.Since = t0 + int64(time.Second)
	d2, err := st.PutDescriptor(d2)
	if err != nil {
		t.Fatal(err)
	}
	if d2.Version != 2 {
		t.Fatalf("second descriptor has version %d", d2.Version)
	}
	ts := serveSamples(t, st)

	h, got := getSamples(t, ts, epID, Selection{})
	ep, err := st.Episode(epID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(h.Episode, ep) {
		t.Errorf("episode differs:\n got %+v\nwant %+v", h.Episode, ep)
	}
	if h.From != t0 || h.To != te.ep.Stop {
		t.Errorf("range [%d, %d], want [%d, %d]", h.From, h.To, t0, te.ep.Stop)
	}
	if len(h.Streams) != 4 {
		t.Fatalf("%d streams in header, want 4", len(h.Streams))
	}
	for _, si := range h.Streams {
		want, err := st.Descriptors(si.Stream)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(si.Descriptors, want) {
			t.Errorf("%s descriptors differ:\n got %+v\nwant %+v", si.Stream, si.Descriptors, want)
		}
	}
	if cam := h.Streams[0]; cam.Stream != sCam || len(cam.Descriptors) != 2 || cam.At(t0).Version != 1 || cam.At(d2.Since).Version != 2 {
		t.Errorf("camera descriptor versions not resolved by time: %+v", cam)
	}

	var want []sample.Sample
	for s, err := range st.Merge([]string{sCam, sDoor, sJoints, sLidar}, t0, te.ep.Stop) {
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, s)
	}
	total := 0
	for _, ss := range te.samples {
		total += len(ss)
	}
	if len(want) != total || len(got) != total {
		t.Fatalf("got %d samples, store merge has %d, stored %d", len(got), len(want), total)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("sample %d differs:\n got %+v\nwant %+v", i, brief(got[i]), brief(want[i]))
		}
	}
	// And against what was appended, per stream.
	per := map[string][]sample.Sample{}
	for _, s := range got {
		per[s.Stream] = append(per[s.Stream], s)
	}
	for name, ss := range te.samples {
		if !reflect.DeepEqual(per[name], ss) {
			t.Errorf("stream %s: samples differ from those appended", name)
		}
	}
	if s := per[sJoints][7]; !s.Flags.Has(sample.Discontinuity) || s.Lost != 2 {
		t.Errorf("flags/lost lost in transit: %+v", brief(s))
	}

	// Selection: a pattern and a range, as SamplesPath puts them in the
	// query.
	h, got = getSamples(t, ts, epID, Selection{Streams: "cell1/robot1/*", From: 500 * time.Millisecond, To: time.Second})
	if len(h.Streams) != 1 || h.Streams[0].Stream != sJoints {
		t.Fatalf("streams %+v, want only %s", h.Streams, sJoints)
	}
	if len(got) != 101 { // T in [t0+500ms, t0+1s] at 5 ms
		t.Errorf("%d samples in [500ms, 1s], want 101", len(got))
	}
	for _, s := range got {
		if s.Stream != sJoints || s.T < t0+int64(500*time.Millisecond) || s.T > t0+int64(time.Second) {
			t.Fatalf("sample outside the selection: %+v", brief(s))
		}
	}
}

func brief(s sample.Sample) sample.Sample {
	if len(s.Payload) > 16 {
		s.Payload = s.Payload[:16]
	}
	return s
}

func TestSamplesEndpointErrors(t *testing.T) {
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	buildEpisode(t, st, epID, t0, 200*time.Millisecond, episode.Closed)
	rec := "0193a1b2-0000-7000-8000-00000000000b"
	buildEpisode(t, st, rec, t0+int64(time.Second), 200*time.Millisecond, episode.Recording)
	ts := serveSamples(t, st)
	for _, c := range []struct {
		id, query string
		code      int
		msg       string
	}{
		{"nope", "", http.StatusNotFound, "episode nope not found"},
		{rec, "", http.StatusConflict, "still recording"},
		{epID, "streams=[", http.StatusBadRequest, "not a valid pattern"},
		{epID, "streams=cell9/*", http.StatusBadRequest, "no stream of episode"},
		{epID, "from=abc", http.StatusBadRequest, "not a duration"},
		{epID, "from=2s&to=1s", http.StatusBadRequest, "not after from"},
		{epID, "from=1h", http.StatusBadRequest, "past the end"},
	} {
		resp, err := http.Get(ts.URL + "/v1/episodes/" + c.id + "/samples?" + c.query)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(body.Error, c.msg) {
			t.Errorf("%s?%s: %d %q, want %d containing %q", c.id, c.query, resp.StatusCode, body.Error, c.code, c.msg)
		}
	}
}

// A stream cut short is reported as truncated, never taken as complete;
// skipped samples are yielded as *SkipError and reading goes on.
func TestReaderTruncatedAndSkips(t *testing.T) {
	var buf bytes.Buffer
	enc := NewEncoder(&buf)
	h := Header{Format: Format, Episode: episode.Episode{ID: "x"}, Streams: []StreamInfo{{Stream: "a"}}}
	if err := enc.Header(h); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		var err error
		if i == 1 {
			err = storage.ErrCorrupt
		}
		if werr := enc.Sample(sample.Sample{Stream: "a", Seq: uint64(i + 1), T: int64(i), Payload: []byte{byte(i)}}, err); werr != nil {
			t.Fatal(werr)
		}
	}
	if err := enc.End(nil); err != nil {
		t.Fatal(err)
	}
	full := buf.Bytes()

	read := func(b []byte) (n, skips int, last error) {
		rd, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return 0, 0, err
		}
		for _, err := range rd.Samples() {
			var se *SkipError
			switch {
			case errors.As(err, &se):
				skips++
			case err != nil:
				last = err
			default:
				n++
			}
		}
		return n, skips, last
	}
	if n, skips, err := read(full); n != 2 || skips != 1 || err != nil {
		t.Errorf("complete stream: %d samples, %d skips, err %v; want 2, 1, nil", n, skips, err)
	}
	for _, cut := range []int{len(full) - 1, len(full) - 10, len(full) / 2} {
		if _, _, err := read(full[:cut]); !errors.Is(err, ErrTruncated) {
			t.Errorf("cut at %d of %d: err %v, want ErrTruncated", cut, len(full), err)
		}
	}
	if _, err := NewReader(strings.NewReader("")); !errors.Is(err, ErrStream) {
		t.Errorf("empty stream: %v, want ErrStream", err)
	}
}
