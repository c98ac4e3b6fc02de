package webrtc

import (
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/episoded/episoded/sample"
)

// Hub is the live tap: the pipeline publishes every video sample into it,
// and WHEP viewers subscribe to one stream each. It never transcodes.
//
// Publish is on the recording path, so it never blocks and never
// allocates per viewer: each viewer has a bounded queue, and when a queue
// is full that viewer's frames are dropped (and counted) until the next
// keyframe that fits. The last keyframe of every stream is cached so a new
// viewer gets a picture at once.
//
// Payloads are shared between the pipeline, storage and every viewer: the
// hub and its viewers only read them.
type Hub struct {
	log *slog.Logger
	mu  struct {
		sync.RWMutex
		streams map[string]*hubStream
	}
}

// hubStream is one stream's state in the hub.
type hubStream struct {
	mu struct {
		sync.Mutex
		desc *sample.Descriptor
		// key is the last keyframe, with its descriptor.
		key *frameItem
		// viewers is a slice, not a map: Publish walks it for every
		// frame, and there are few viewers.
		viewers []*viewer
	}
	published atomic.Uint64
}

// frameItem is one sample on its way to a viewer, with the descriptor in
// force when it was published (for the parameter sets).
type frameItem struct {
	s    sample.Sample
	desc *sample.Descriptor
}

// viewer is one subscriber's queue. waitKey and startup are guarded by
// its stream's mu.
type viewer struct {
	ch chan frameItem
	// waitKey: skip frames until the next keyframe. startup: the skip is
	// the start-up rule (not counted), else it follows a full queue
	// (counted).
	waitKey, startup bool
	// dropped counts frames dropped because the queue was full, or while
	// waiting for a keyframe after that.
	dropped atomic.Uint64
	// onDrop, if set, is called (under the stream lock, so it must be
	// cheap) for every dropped frame.
	onDrop func()
}

// NewHub returns an empty hub. logger may be nil.
func NewHub(logger *slog.Logger) *Hub {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &Hub{log: logger.With("component", "devices.webrtc.hub")}
	h.mu.streams = map[string]*hubStream{}
	return h
}

func (h *Hub) stream(id string, create bool) *hubStream {
	h.mu.RLock()
	st := h.mu.streams[id]
	h.mu.RUnlock()
	if st != nil || !create {
		return st
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if st = h.mu.streams[id]; st == nil {
		st = &hubStream{}
		h.mu.streams[id] = st
	}
	return st
}

// Publish hands one video sample of stream d.Stream to the stream's
// viewers. It never blocks. Samples of other kinds, and empty ones, are
// ignored. d is copied only when it changes: a descriptor with the same
// non-zero Version and Since as the last one is taken as unchanged
// (storage assigns a new Version to every change); otherwise it is
// compared in full. The hub only reads s.Payload, and keeps the last
// keyframe's payload until the next keyframe.
func (h *Hub) Publish(d sample.Descriptor, s sample.Sample) {
	if d.Kind != sample.KindVideo || len(s.Payload) == 0 {
		return
	}
	id := d.Stream
	if id == "" {
		id = s.Stream
	}
	st := h.stream(id, true)
	st.published.Add(1)
	st.mu.Lock()
	defer st.mu.Unlock()
	if cur := st.mu.desc; cur == nil || cur.Version != d.Version || cur.Since != d.Since ||
		(d.Version == 0 && !cur.Equal(d)) {
		dc := d
		dc.Stream = id
		st.mu.desc = &dc
	}
	it := frameItem{s: s, desc: st.mu.desc}
	key := s.Flags.Has(sample.Keyframe)
	if key {
		k := it
		st.mu.key = &k
	}
	for _, v := range st.mu.viewers {
		if v.waitKey && !key {
			if !v.startup {
				v.drop()
			}
			continue
		}
		select {
		case v.ch <- it:
			v.waitKey, v.startup = false, false
		default:
			v.waitKey, v.startup = true, false
			v.drop()
		}
	}
}

func (v *viewer) drop() {
	v.dropped.Add(1)
	if v.onDrop != nil {
		v.onDrop()
	}
}

// Descriptor returns the descriptor last published on stream, and whether
// the stream has published anything.
func (h *Hub) Descriptor(stream string) (sample.Descriptor, bool) {
	st := h.stream(stream, false)
	if st == nil {
		return sample.Descriptor{}, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.mu.desc == nil {
		return sample.Descriptor{}, false
	}
	return *st.mu.desc, true
}

// Streams returns the ids of the streams that have published video.
func (h *Hub) Streams() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]string, 0, len(h.mu.streams))
	for id := range h.mu.streams {
		out = append(out, id)
	}
	return out
}

// subscribe adds a viewer with a queue of size n to stream. The cached
// keyframe, if any, is queued first; after it, frames are skipped until
// the next keyframe (the frames in between are gone, and a decoder could
// not use the rest of the group without them). Those skipped frames are
// not counted as drops. It returns false if the stream has never published.
func (h *Hub) subscribe(stream string, n int, onDrop func()) (*viewer, bool) {
	st := h.stream(stream, false)
	if st == nil {
		return nil, false
	}
	v := &viewer{ch: make(chan frameItem, n), onDrop: onDrop}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.mu.key != nil {
		v.ch <- *st.mu.key
	}
	v.waitKey, v.startup = true, true
	st.mu.viewers = append(st.mu.viewers, v)
	return v, true
}

// unsubscribe removes v from stream.
func (h *Hub) unsubscribe(stream string, v *viewer) {
	st := h.stream(stream, false)
	if st == nil {
		return
	}
	st.mu.Lock()
	if i := slices.Index(st.mu.viewers, v); i >= 0 {
		st.mu.viewers = slices.Delete(st.mu.viewers, i, i+1)
	}
	st.mu.Unlock()
}

// viewers returns the number of viewers of stream.
func (h *Hub) viewers(stream string) int {
	st := h.stream(stream, false)
	if st == nil {
		return 0
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.mu.viewers)
}
