package replay

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"

	"github.com/episoded/episoded/sample"
)

// item is one element of the read-ahead: a sample of a pass, or the end of
// a pass.
type item struct {
	pass int64
	s    sample.Sample
	err  error
	end  bool // the pass's samples ended (err, if any, is why)
}

// readAhead reads samples ahead of the schedule on its own goroutine, pass
// after pass (reopening the source for each pass after the first), into a
// bounded channel: at most Options.ReadAhead samples and
// Options.ReadAheadBytes of payload (one sample larger than that still
// passes). Full-rule: the reader waits; nothing is dropped.
//
// The schedule takes items from items and hands each back with took, which
// frees its bytes. primed is closed once the read-ahead is full or the
// first pass is read, so the clock can start without reading delaying the
// first samples. stop ends the reader and waits for it.
type readAhead struct {
	items  chan item
	primed chan struct{}

	maxBytes int64
	queued   atomic.Int64  // payload bytes in items
	space    chan struct{} // cap 1: wakes the reader waiting for bytes
	prime    func()        // closes primed, once

	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		closeCur func() // releases the pass being read
	}
}

// startReadAhead starts reading: the first pass from first (already
// opened by Run, released by closeFirst), later passes (with loop) from
// open, which must yield the same range as h.
func startReadAhead(ctx context.Context, o Options, h Header, open Opener, first iter.Seq2[sample.Sample, error], closeFirst func()) *readAhead {
	r := &readAhead{
		items:    make(chan item, o.ReadAhead),
		primed:   make(chan struct{}),
		maxBytes: o.ReadAheadBytes,
		space:    make(chan struct{}, 1),
	}
	var once sync.Once
	r.prime = func() { once.Do(func() { close(r.primed) }) }
	r.ctx, r.cancel = context.WithCancel(ctx)
	r.mu.closeCur = closeFirst
	r.wg.Go(func() {
		defer close(r.items)
		defer r.prime()
		r.read(h, open, first, closeFirst, o.Loop)
	})
	return r
}

// read is the reader goroutine: every pass's samples, then its end item.
// A sample the source could not read (SkipError) is passed on for the
// schedule to count; any other error ends the pass and the reading.
func (r *readAhead) read(h Header, open Opener, seq iter.Seq2[sample.Sample, error], cl func(), loop bool) {
	for pass := int64(0); ; pass++ {
		if pass > 0 {
			h2, s2, c2, err := open(r.ctx)
			if err == nil && (h2.From != h.From || h2.To != h.To) {
				c2()
				err = errors.New("the episode changed between passes")
			}
			if err != nil {
				r.put(item{pass: pass, end: true, err: fmt.Errorf("reopen for pass %d: %w", pass+1, err)})
				return
			}
			seq, cl = s2, c2
			r.mu.Lock()
			r.mu.closeCur = cl
			r.mu.Unlock()
		}
		var endErr error
		for s, err := range seq {
			var skip *SkipError
			if err != nil && !errors.As(err, &skip) {
				endErr = err
				break
			}
			if !r.put(item{pass: pass, s: s, err: err}) {
				cl()
				return
			}
		}
		cl()
		if !r.put(item{pass: pass, end: true, err: endErr}) {
			return
		}
		r.prime()
		if endErr != nil || !loop {
			return
		}
	}
}

// put queues it, waiting while the read-ahead is full (by count or by
// bytes); false if stopped meanwhile.
func (r *readAhead) put(it item) bool {
	n := int64(len(it.s.Payload))
	for q := r.queued.Load(); q > 0 && q+n > r.maxBytes; q = r.queued.Load() {
		r.prime()
		select {
		case <-r.space:
		case <-r.ctx.Done():
			return false
		}
	}
	r.queued.Add(n)
	select {
	case r.items <- it:
	default:
		r.prime()
		select {
		case r.items <- it:
		case <-r.ctx.Done():
			return false
		}
	}
	return true
}

// took frees the bytes of an item taken from items.
func (r *readAhead) took(it item) {
	if n := int64(len(it.s.Payload)); n > 0 {
		r.queued.Add(-n)
		select {
		case r.space <- struct{}{}:
		default:
		}
	}
}

// stop ends the reader: it cancels it, releases the pass being read (which
// unblocks a read in progress, such as an HTTP body), drains items and
// waits for the goroutine.
func (r *readAhead) stop() {
	r.cancel()
	r.mu.Lock()
	r.mu.closeCur() // idempotent and quick (closes a body): held to not miss a pass being opened
	r.mu.Unlock()
	for range r.items {
	}
	r.wg.Wait()
}
