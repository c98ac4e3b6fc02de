package sample

import "testing"

func TestDescriptorEqual(t *testing.T) {
	base := Descriptor{
		Stream: "cell1/cam", Version: 1, Kind: KindVideo, Codec: CodecH264,
		Params: [][]byte{{0x67, 1, 2}, {0x68, 3}}, Device: "cam", Source: "rtsp://h/s",
		Clock: ClockDevice, Latency: 5, Since: 100,
		Layout: &PointLayout{HeaderSize: 16, Stride: 16, Fields: []PointField{{"x", 0, "float32"}}},
	}
	same := base
	same.Version, same.Since = 7, 999
	same.Params = [][]byte{{0x67, 1, 2}, {0x68, 3}}
	same.Layout = &PointLayout{HeaderSize: 16, Stride: 16, Fields: []PointField{{"x", 0, "float32"}}}
	if !base.Equal(same) {
		t.Fatal("descriptors differing only in Version and Since must be equal")
	}
	for name, mutate := range map[string]func(d *Descriptor){
		"params":     func(d *Descriptor) { d.Params = [][]byte{{0x67, 1, 9}, {0x68, 3}} },
		"param set":  func(d *Descriptor) { d.Params = d.Params[:1] },
		"codec":      func(d *Descriptor) { d.Codec = CodecH265 },
		"clock":      func(d *Descriptor) { d.Clock = ClockArrival },
		"layout nil": func(d *Descriptor) { d.Layout = nil },
		"layout":     func(d *Descriptor) { d.Layout = &PointLayout{HeaderSize: 16, Stride: 20} },
		"source":     func(d *Descriptor) { d.Source = "x" },
	} {
		d := same
		mutate(&d)
		if base.Equal(d) {
			t.Errorf("%s change not detected", name)
		}
	}
}

func TestFlagsHas(t *testing.T) {
	f := Keyframe | Discontinuity
	if !f.Has(Keyframe) || !f.Has(Keyframe|Discontinuity) || f.Has(DecodeError) || f.Has(Keyframe|DecodeError) {
		t.Fatalf("Has is wrong for %b", f)
	}
}
