package ingest

import "github.com/episoded/episoded/sample"

// decodeOrder turns a video sample's aligned presentation time into its
// decode time. Process stamps T from the device's presentation (capture)
// time, because that is the time the clock estimator can bound; a stream
// with B-frames sends its frames in decode order, which is not
// presentation order, so T would go back and forth and storage (keyed by
// T) would reorder the frames. decodeOrder sets
//
//	T = presentation - PTSOffset (the device's PTS - DTS), never below the
//	previous sample's T,
//
// and then PTSOffset = presentation - T, so that T + PTSOffset is still the
// aligned presentation time. Samples without reordering (PTSOffset 0 and
// presentation times that only increase) are left as they are.
type decodeOrder struct {
	last int64
	have bool
}

func (d *decodeOrder) apply(x *sample.Sample) {
	pts := x.T
	t := pts - x.PTSOffset
	if d.have && t < d.last {
		t = d.last
	}
	x.T, x.PTSOffset = t, pts-t
	d.last, d.have = t, true
}
