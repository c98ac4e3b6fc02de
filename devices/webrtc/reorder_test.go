package webrtc

import (
	"slices"
	"testing"
	"time"

	"github.com/pion/rtp"
)

func TestReorderer(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	type step struct {
		seq    uint16
		at     int  // ms
		expire bool // call expire at `at` instead of push
	}
	for _, c := range []struct {
		name   string
		steps  []step
		want   []uint16
		filled uint64
	}{
		{"in order across wrap", []step{{65534, 0, false}, {65535, 1, false}, {0, 2, false}, {1, 3, false}},
			[]uint16{65534, 65535, 0, 1}, 0},
		{"reordered pair", []step{{10, 0, false}, {12, 1, false}, {11, 2, false}, {13, 3, false}},
			[]uint16{10, 11, 12, 13}, 1},
		{"retransmission across wrap", []step{{65535, 0, false}, {1, 1, false}, {2, 2, false}, {0, 50, false}},
			[]uint16{65535, 0, 1, 2}, 1},
		{"duplicate and late dropped", []step{{5, 0, false}, {6, 1, false}, {6, 2, false}, {4, 3, false}},
			[]uint16{5, 6}, 0},
		{"gap given up after the wait", []step{{1, 0, false}, {3, 10, false}, {4, 20, false}, {0, 159, true}, {0, 160, true}, {2, 170, false}, {5, 171, false}},
			[]uint16{1, 3, 4, 5}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			var filled counter
			r := newReorderer(150*time.Millisecond, 512, &filled)
			var got []uint16
			out := func(p *rtp.Packet) { got = append(got, p.SequenceNumber) }
			for _, s := range c.steps {
				if s.expire {
					r.expire(ms(s.at), out)
					continue
				}
				r.push(&rtp.Packet{Header: rtp.Header{SequenceNumber: s.seq}}, ms(s.at), out)
			}
			if !slices.Equal(got, c.want) || filled.Load() != c.filled {
				t.Fatalf("released %v (filled %d), want %v (filled %d)", got, filled.Load(), c.want, c.filled)
			}
		})
	}

	// Beyond maxHeld packets, the gap is given up at once.
	var filled counter
	r := newReorderer(time.Hour, 4, &filled)
	var got []uint16
	out := func(p *rtp.Packet) { got = append(got, p.SequenceNumber) }
	for _, s := range []uint16{0, 2, 3, 4, 5, 6} {
		r.push(&rtp.Packet{Header: rtp.Header{SequenceNumber: s}}, t0, out)
	}
	if !slices.Equal(got, []uint16{0, 2, 3, 4, 5, 6}) || !r.deadline().IsZero() {
		t.Fatalf("released %v, want all but 1 once more than 4 were held", got)
	}
}
