package ingest

import (
	"fmt"
	"math"
	"math/bits"
	"time"

	"github.com/episoded/episoded/episode"
)

// Clock sources reported in ClockStatus.Source and episode.ClockReport.
const (
	SourceDevice  = "device"
	SourceArrival = "arrival"
)

// resetCap bounds ClockOptions.MaxResets.
const resetCap = 16

// heldWindow is how many recent samples the held-back fraction is taken
// over.
const heldWindow = 16

// acquireTimeout is how long a device clock may go without any agreed
// offset (with at least heldWindow samples) before the stream is put on
// arrival time.
const acquireTimeout = 2 * time.Second

// trust decides whether a device-clock stream's source clock can be used
// at all (issue: cameras whose RTP timestamps run at the wrong rate or step
// back at every keyframe). It is fed every sample that carries device time,
// after the Clock has seen it, and puts the stream on arrival time when:
//
//   - more than MaxResets resets happen within ResetWindow (a reset is a
//     confirmed step, or a device time going back more than ReorderDepth
//     behind the previous accepted one): no reset storms;
//   - the clock's rate, measured over RateSpan or more, disagrees with
//     arrival by more than RateTolerance;
//   - more than MaxHeldFraction of the last heldWindow samples were held
//     back as wild (agreeing with no held-back sample before them; the
//     samples of a step waiting for confirmation agree), or no offset was
//     agreed for acquireTimeout.
//
// On arrival time the Clock keeps running (quietly) on the device times;
// once it has been consistent (converged, nothing held, no reset, rate
// within tolerance) for Probation, the stream goes back to device time.
// Both switches are clock events.
type trust struct {
	o       ClockOptions
	arrival bool
	reason  string

	havePrev bool
	prevSrc  int64 // the last device time that was not wild
	// regressRun: a going-back was counted in the current run of held
	// samples; the step that confirms it is not counted again.
	regressRun bool

	resets  [resetCap]int64 // arrival times of recent resets (ring)
	nres    int
	resHead int

	heldBits uint64 // 1 bit per recent sample, newest lowest
	nbits    int
	acqSince int64 // arrival of the first sample while acquiring, 0 if not
	acqN     int

	goodSince int64 // arrival of the first sample of the current consistent run
	good      bool
}

// observe feeds one sample; it returns an event when the source changes.
func (u *trust) observe(src, recv int64, held, jumped bool, c *Clock) (episode.ClockEvent, bool) {
	wild := held && c.LastWild()
	// Going back is measured between samples that are not wild (a single
	// wild value must not count, nor make the next good one look like it
	// went back); held-back samples that agree count, so a clock that
	// steps back at every keyframe is seen even before a step is
	// confirmed.
	regressed := false
	if !wild {
		regressed = u.havePrev && src < satSub(u.prevSrc, int64(u.o.ReorderDepth))
		u.havePrev, u.prevSrc = true, src
	}
	// While the clock is still looking for its first agreed offset, every
	// sample is held back, and a backlog delivered in a burst is held
	// until samples arrive paced: that is not wildness. A clock that finds
	// no offset for acquireTimeout is.
	acquiring := !c.haveLine
	switch {
	case !acquiring:
		u.acqSince = 0
		u.heldBits <<= 1
		if wild {
			u.heldBits |= 1
		}
		u.nbits = min(u.nbits+1, heldWindow)
	case u.acqSince == 0:
		u.acqSince, u.acqN = recv, 1
	default:
		u.acqN++
	}
	rate, rateOK := c.RateError()
	badRate := rateOK && c.SpanNs() >= int64(u.o.RateSpan) && math.Abs(rate) > u.o.RateTolerance

	if u.arrival {
		if held || jumped || regressed || badRate || !c.Converged() {
			u.good = false
			return episode.ClockEvent{}, false
		}
		if !u.good {
			u.good, u.goodSince = true, recv
		}
		if satSub(recv, u.goodSince) < int64(u.o.Probation) {
			return episode.ClockEvent{}, false
		}
		u.arrival, u.reason, u.good = false, "", false
		u.nres, u.resHead, u.heldBits, u.nbits, u.acqSince = 0, 0, 0, 0, 0
		return episode.ClockEvent{T: recv, Kind: EventTrusted,
			Detail: fmt.Sprintf("device clock consistent for %v; back to device time", u.o.Probation)}, true
	}

	// A step back shows twice: its samples go back (while held, waiting
	// for confirmation) and then the step is confirmed. It is one reset.
	reset := regressed || (jumped && !u.regressRun)
	if regressed {
		u.regressRun = true
	}
	if cand, _ := c.LastCandidate(); jumped || (!cand && !held) {
		u.regressRun = false
	}
	var why string
	if reset {
		i := (u.resHead + u.nres) % resetCap
		if u.nres == resetCap {
			u.resHead = (u.resHead + 1) % resetCap
		} else {
			u.nres++
		}
		u.resets[i] = recv
		// Resets within the window, newest first.
		n := 0
		for j := u.nres - 1; j >= 0; j-- {
			if satSub(recv, u.resets[(u.resHead+j)%resetCap]) > int64(u.o.ResetWindow) {
				break
			}
			n++
		}
		if n > u.o.MaxResets {
			kind := "steps"
			if regressed {
				kind = "steps or backward timestamps"
			}
			why = fmt.Sprintf("%d clock resets (%s) within %v", n, kind, u.o.ResetWindow)
		}
	}
	if why == "" && badRate {
		why = fmt.Sprintf("device clock rate differs from arrival by %.1f%% over %v", 100*math.Abs(rate), time.Duration(c.SpanNs()).Round(time.Millisecond))
	}
	if why == "" && acquiring && u.acqN >= heldWindow && satSub(recv, u.acqSince) >= int64(acquireTimeout) {
		why = fmt.Sprintf("no %d consecutive device timestamps agreed on an offset for %v (%d samples)", c.o.JumpConfirmSamples, acquireTimeout, u.acqN)
	}
	if why == "" && u.nbits >= heldWindow {
		if n := bits.OnesCount64(u.heldBits & (1<<heldWindow - 1)); float64(n) > u.o.MaxHeldFraction*heldWindow {
			why = fmt.Sprintf("%d of the last %d device timestamps were wild (disagreed with the clock)", n, heldWindow)
		}
	}
	if why == "" {
		return episode.ClockEvent{}, false
	}
	u.arrival, u.reason, u.good = true, why, false
	return episode.ClockEvent{T: recv, Kind: EventUntrusted,
		Detail: "device clock unusable: " + why + "; stamping arrival time"}, true
}

// arrivalJitter measures how irregularly a stream's samples arrive: the
// largest deviation of recent arrival intervals from a whole number of the
// typical period (the median interval). It bounds the error of arrival
// stamping beyond the unobservable minimum delay, and is what a stream on
// arrival fallback states as its bound. O(1) per sample, no allocation.
type arrivalJitter struct {
	have   bool
	prev   int64
	iv     [gapRing]int64 // recent intervals
	niv    int
	pos    int
	period int64
	dev    [64]int64 // recent deviations
	ndev   int
	dpos   int
	maxDev int64
	// excess is how much later than its cadence the last sample arrived,
	// compared with the earliest one (Lindley's recursion on arrival
	// intervals minus the period): a sample held up by a stall, and the
	// bunch that follows it, owe that delay, which no deviation from
	// whole periods shows.
	excess int64
	since  int
	// periodOnly: only the typical period is wanted (the cadence).
	periodOnly bool
}

// add records an arrival; disc: samples were lost just before this one
// (then the interval spans them and is taken as whole periods).
func (a *arrivalJitter) add(recv int64, disc bool) {
	if !a.have {
		a.have, a.prev = true, recv
		return
	}
	iv := satSub(recv, a.prev)
	a.prev = recv
	if iv < 0 {
		return
	}
	a.iv[a.pos] = iv
	a.pos = (a.pos + 1) % gapRing
	a.niv = min(a.niv+1, gapRing)
	a.since++
	// The period moves slowly: its median (a sort of 32) is refreshed
	// every 64 intervals, which keeps this a few ns per sample.
	if a.period == 0 && a.niv >= 8 || a.since >= 64 {
		a.period = medianOf(a.iv[:a.niv])
	}
	if a.period <= 0 || a.periodOnly {
		if a.since >= 64 {
			a.since = 0
		}
		return
	}
	k := (iv + a.period/2) / a.period
	d := iv - k*a.period
	// The excess delay: the interval beyond one period (whole periods
	// after a loss) adds to it, a shorter one takes it back. The period
	// is taken 1/256 long so that a median a little short of the true
	// period cannot make it creep up without end; a little long, it
	// understates a bunch by that much per sample, which the jitter term
	// of the bound covers.
	exp := a.period + a.period/256
	if disc {
		exp = max(k, 1) * exp
	}
	a.excess = max(satAdd(a.excess, iv-exp), 0)
	if d < 0 {
		d = -d
	}
	a.dev[a.dpos] = d
	a.dpos = (a.dpos + 1) % len(a.dev)
	a.ndev = min(a.ndev+1, len(a.dev))
	if d > a.maxDev {
		a.maxDev = d
	}
	if a.since >= 64 {
		a.since = 0
		var m int64
		for _, v := range a.dev[:a.ndev] {
			m = max(m, v)
		}
		a.maxDev = m
	}
}

// bound is the measured arrival jitter, and whether enough was measured.
func (a *arrivalJitter) bound() (int64, bool) {
	return a.maxDev, a.ndev >= 8
}

// late is how much later than its cadence the last sample arrived
// compared with the earliest recent one (see excess).
func (a *arrivalJitter) late() int64 { return a.excess }
