package video

import (
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h265"
)

// DTS finds each access unit's decode time from its presentation time (the
// RTP timestamp) with mediacommon's DTS extractors, the way mediamtx does.
// Streams without B-frames get offset 0. Feed it the units in decode
// (arrival) order, starting at a keyframe.
type DTS struct {
	c      *Codec
	h264   *h264.DTSExtractor
	h265   *h265.DTSExtractor
	ok     bool // the extractor has seen a keyframe and not failed since
	have   bool
	lastTS uint32
	pts    int64 // unwrapped RTP timestamp of the last unit
	// Failures counts units the extractor could not follow (stamped with
	// offset 0).
	Failures uint64
}

// Init prepares d for codec c.
func (d *DTS) Init(c *Codec) {
	d.c = c
	d.Reset()
}

// Reset forgets the stream's history, after a gap: the next keyframe
// starts it again.
func (d *DTS) Reset() {
	d.ok = false
	d.have = false
	if d.c == H265 {
		d.h265 = &h265.DTSExtractor{}
		d.h265.Initialize()
	} else {
		d.h264 = &h264.DTSExtractor{}
		d.h264.Initialize()
	}
}

// Offset returns the presentation offset (PTS - DTS, in ns, >= 0) of au,
// whose RTP timestamp is ts; params are the stream's current parameter
// sets (the extractor needs them in front of keyframes).
func (d *DTS) Offset(au [][]byte, params [][]byte, key bool, ts uint32) int64 {
	if d.have {
		d.pts += int64(int32(ts - d.lastTS))
	} else {
		d.have, d.pts = true, int64(ts)
	}
	d.lastTS = ts
	if !d.ok {
		if !key {
			return 0
		}
		d.ok = true
	}
	if key {
		au = d.c.WithParams(au, params, true)
	}
	var dts int64
	var err error
	if d.c == H265 {
		dts, err = d.h265.Extract(au, d.pts)
	} else {
		dts, err = d.h264.Extract(au, d.pts)
	}
	if err != nil || dts > d.pts {
		d.Failures++
		d.Reset()
		d.have, d.lastTS = true, ts
		return 0
	}
	return (d.pts - dts) * 1e9 / ClockRate
}
