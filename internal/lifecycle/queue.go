package lifecycle

import (
	"context"
	"errors"
	"sync"
)

// step is one piece of persistence work, run by the cell's worker.
type step func(ctx context.Context) error

// job is the steps of one call, run in order; done (buffered) receives
// their joined error.
type job struct {
	steps []step
	done  chan error
}

// jobQueue is a cell's persistence queue. It grows by a few jobs per
// episode (start, stop, settle) and is drained by one worker; it is never
// full, and a push never blocks.
type jobQueue struct {
	// mu guards jobs; a leaf lock (pushed under cellState.mu).
	mu   sync.Mutex
	jobs []job
	wake chan struct{}
}

// push queues steps and returns the channel their result will arrive on.
func (q *jobQueue) push(steps []step) <-chan error {
	done := make(chan error, 1)
	if len(steps) == 0 {
		done <- nil
		return done
	}
	q.mu.Lock()
	q.jobs = append(q.jobs, job{steps: steps, done: done})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return done
}

func (q *jobQueue) pop() (job, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.jobs) == 0 {
		return job{}, false
	}
	j := q.jobs[0]
	q.jobs[0] = job{}
	q.jobs = q.jobs[1:]
	return j, true
}

// wait waits for a job's result.
func wait(ctx context.Context, done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// work runs the cell's persistence jobs in order until ctx is cancelled.
// It holds no lock while a step runs.
func (c *Cells) work(ctx context.Context, cs *cellState) {
	for {
		for {
			j, ok := cs.q.pop()
			if !ok {
				break
			}
			var errs []error
			for _, s := range j.steps {
				if err := s(ctx); err != nil {
					c.log.Error("persist episode", "cell", cs.cfg.ID, "err", err)
					errs = append(errs, err)
				}
			}
			j.done <- errors.Join(errs...)
		}
		select {
		case <-ctx.Done():
			return
		case <-cs.q.wake:
		}
	}
}

// flush waits until every job queued so far on every cell has run.
func (c *Cells) flush(ctx context.Context) error {
	var dones []<-chan error
	for _, id := range c.order {
		cs := c.byID[id]
		dones = append(dones, cs.q.push([]step{func(context.Context) error { return nil }}))
	}
	for _, d := range dones {
		if err := wait(ctx, d); err != nil {
			return err
		}
	}
	return nil
}
