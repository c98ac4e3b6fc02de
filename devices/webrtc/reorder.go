package webrtc

import (
	"slices"
	"time"

	"github.com/pion/rtp"
)

// reorderer puts a WHIP track's RTP packets back in sequence order before
// assembly. After a gap it holds the later packets for up to wait, so a
// retransmission (answering the NACK that pion's generator interceptor
// sends) or a reordered packet can fill the gap; then it gives up and
// releases what it holds, gap and all, and the assembler counts the loss.
// It holds at most maxHeld packets; beyond that it gives up at once.
//
// It runs on the session's RTP reader goroutine only.
type reorderer struct {
	wait    time.Duration
	maxHeld int
	have    bool
	next    uint16 // the sequence number expected next
	held    map[uint16]*rtp.Packet
	since   time.Time // when the current gap started waiting
	// filled counts gaps closed by a late packet (retransmission or
	// reordering).
	filled *counter
}

func newReorderer(wait time.Duration, maxHeld int, filled *counter) *reorderer {
	return &reorderer{wait: wait, maxHeld: maxHeld, held: map[uint16]*rtp.Packet{}, filled: filled}
}

// push takes one packet that arrived at now and releases, through out,
// every packet that is now in order.
func (r *reorderer) push(pkt *rtp.Packet, now time.Time, out func(*rtp.Packet)) {
	seq := pkt.SequenceNumber
	if !r.have || r.wait <= 0 {
		r.have, r.next = true, seq+1
		out(pkt)
		return
	}
	switch d := seq - r.next; {
	case d >= 0x8000: // before next: a duplicate, or too late
		return
	case d == 0:
		if len(r.held) > 0 {
			r.filled.Add(1)
		}
		r.next++
		out(pkt)
		r.drain(now, out)
	default:
		if _, dup := r.held[seq]; dup {
			return
		}
		if len(r.held) == 0 {
			r.since = now
		}
		r.held[seq] = pkt
		if len(r.held) > r.maxHeld {
			r.flush(out)
		}
	}
}

// drain releases the held packets that follow next without a gap.
func (r *reorderer) drain(now time.Time, out func(*rtp.Packet)) {
	for {
		p, ok := r.held[r.next]
		if !ok {
			break
		}
		delete(r.held, r.next)
		r.next++
		out(p)
	}
	if len(r.held) > 0 {
		r.since = now // a further gap: it gets its own wait
	}
}

// deadline is when the current gap is given up; zero if there is none.
func (r *reorderer) deadline() time.Time {
	if len(r.held) == 0 {
		return time.Time{}
	}
	return r.since.Add(r.wait)
}

// expire gives up on the current gap if its wait is over at now.
func (r *reorderer) expire(now time.Time, out func(*rtp.Packet)) {
	if len(r.held) > 0 && !now.Before(r.deadline()) {
		r.flush(out)
	}
}

// flush releases every held packet in sequence order, gaps included.
func (r *reorderer) flush(out func(*rtp.Packet)) {
	seqs := make([]uint16, 0, len(r.held))
	for s := range r.held {
		seqs = append(seqs, s)
	}
	next := r.next
	slices.SortFunc(seqs, func(a, b uint16) int { return int(a-next) - int(b-next) })
	for _, s := range seqs {
		out(r.held[s])
		delete(r.held, s)
	}
	r.next = seqs[len(seqs)-1] + 1
}
