package sample

// VideoStart says where a video stream's data for a window [from, to]
// really starts: every consumer (export, replay, WHEP) begins decoding at a
// keyframe, so a window that starts mid-GOP starts at the last keyframe at
// or before from (pre-roll from the stored timeline). If that keyframe is no
// longer stored, the video starts at the first keyframe inside the window
// and the samples before it are left out.
type VideoStart struct {
	Stream string `json:"stream"`
	// Found: there is a keyframe to start from. If false the window holds
	// no decodable video of the stream and nothing is read.
	Found bool `json:"found"`
	// T and Seq identify the first sample to read, a keyframe.
	T   int64  `json:"t_ns"`
	Seq uint64 `json:"seq"`
	// Skipped counts the samples inside the window before the start that
	// are left out because the keyframe they depend on is gone.
	Skipped uint64 `json:"skipped"`
}

// Before reports whether sample (t, seq) of the stream comes before the
// start (and so is not read).
func (v VideoStart) Before(t int64, seq uint64) bool {
	return t < v.T || (t == v.T && seq < v.Seq)
}
