package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// Publisher publishes MQTT messages; *mqtt.Publisher implements it.
type Publisher interface {
	// Publish sends payload to topic at qos; done is called once the
	// broker acknowledged it (or with the error). An error return means
	// the connection is gone and done will not be called.
	Publish(topic string, qos byte, payload []byte, done func(error)) error
}

// VideoStream serves one camera; *rtsp.OutStream implements it.
type VideoStream interface {
	// WriteAccessUnit sends one Annex-B access unit with its media time
	// (RTP timestamps derive from it) and its absolute time (sender
	// reports map RTP time to it).
	WriteAccessUnit(media time.Duration, abs int64, au []byte) error
}

// Opener opens the samples of an episode once per pass: the header, the
// samples in time order, and a function that releases them (closes an
// HTTP body). close may be called from another goroutine to unblock a
// pending read.
type Opener func(ctx context.Context) (h Header, samples iter.Seq2[sample.Sample, error], close func(), err error)

// StoreOpener opens episode id from a Source (a store opened directly).
func StoreOpener(src Source, id string, sel Selection) Opener {
	return func(context.Context) (Header, iter.Seq2[sample.Sample, error], func(), error) {
		h, seq, err := Open(src, id, sel)
		return h, seq, func() {}, err
	}
}

// ReaderOpener opens a samples stream with get (an HTTP GET of the samples
// endpoint, say) and reads it with NewReader.
func ReaderOpener(get func(ctx context.Context) (io.ReadCloser, error)) Opener {
	return func(ctx context.Context) (Header, iter.Seq2[sample.Sample, error], func(), error) {
		body, err := get(ctx)
		if err != nil {
			return Header{}, nil, nil, err
		}
		rd, err := NewReader(body)
		if err != nil {
			body.Close()
			return Header{}, nil, nil, err
		}
		var once sync.Once
		return rd.Header(), rd.Samples(), func() { once.Do(func() { body.Close() }) }, nil
	}
}

// QoS is the MQTT QoS replay publishes with.
const QoS = 1

// Default option values.
const (
	DefaultReadAhead      = 4096
	DefaultReadAheadBytes = 64 << 20
	DefaultAckTimeout     = 10 * time.Second
)

// ErrNothing: no selected stream can go to a configured sink.
var ErrNothing = errors.New("replay: nothing to replay")

// Options configure a Player. Zero values take the documented defaults.
type Options struct {
	// Rate scales time: 2 plays twice as fast. Default 1.
	Rate float64
	// Loop replays the selection until ctx is cancelled.
	Loop bool
	// TopicPrefix, if set, publishes topic T under Prefix/T.
	TopicPrefix string
	// MQTT receives telemetry, point clouds and events; nil skips them.
	MQTT Publisher
	// Video returns the sink of a video stream (called once per stream,
	// before the clock starts); nil skips video.
	Video func(stream string, d sample.Descriptor) (VideoStream, error)
	// BeforeStart, if set, is called once the sinks exist and before the
	// clock starts (to print URLs or wait for viewers).
	BeforeStart func(ctx context.Context, h Header) error
	// ReadAhead bounds the samples read ahead of the schedule (default
	// 4096), and ReadAheadBytes their payload bytes (default 64 MiB; one
	// sample larger than that is still read). When full, reading waits:
	// nothing is dropped. The clock starts once the read-ahead is full or
	// the whole selection is read.
	ReadAhead      int
	ReadAheadBytes int64
	// AckTimeout bounds the wait for the last MQTT acknowledgements
	// (default 10s).
	AckTimeout time.Duration
	Logger     *slog.Logger
}

// Validate reports every problem at once. New runs EnsureDefaults, then
// Validate.
func (o *Options) Validate() error {
	var errs []error
	if o.Rate < 0 || math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
		errs = append(errs, fmt.Errorf("rate: %v is not a positive number", o.Rate))
	}
	if o.ReadAhead < 0 || o.ReadAheadBytes < 0 {
		errs = append(errs, fmt.Errorf("read ahead: %d samples, %d bytes: negative", o.ReadAhead, o.ReadAheadBytes))
	}
	if o.AckTimeout < 0 {
		errs = append(errs, fmt.Errorf("ack timeout: %s is negative", o.AckTimeout))
	}
	if strings.ContainsAny(o.TopicPrefix, "+#") {
		errs = append(errs, fmt.Errorf("topic prefix: %q holds an MQTT wildcard", o.TopicPrefix))
	}
	return errors.Join(errs...)
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (o *Options) EnsureDefaults() {
	if o.Rate == 0 {
		o.Rate = 1
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = DefaultReadAhead
	}
	if o.ReadAheadBytes == 0 {
		o.ReadAheadBytes = DefaultReadAheadBytes
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Sinks.
const (
	SinkMQTT = "mqtt"
	SinkRTSP = "rtsp"
)

// Player replays episodes. New starts nothing; Run plays one replay.
type Player struct {
	o   Options
	log *slog.Logger
}

// New checks the options.
func New(o Options) (*Player, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("replay options: %w", err)
	}
	return &Player{o: o, log: o.Logger.With("component", "replay")}, nil
}

// stream is one selected stream's replay state. Counters written by the
// done callbacks are atomic; the rest belongs to Run's goroutine.
type stream struct {
	info   StreamInfo
	sink   string
	target string // MQTT topic or RTSP URL
	note   string
	video  VideoStream
	sdp    *sample.Descriptor // descriptor whose parameter sets the SDP carries
	// start leaves out what a decoder starting at the first keyframe
	// cannot decode (H.265 RASL pictures after a CRA), once per pass.
	start     video.StartFilter
	startPass int64

	sent, skipped, failed, inserted uint64
	acked, nacked                   atomic.Uint64
	firstErr                        atomic.Pointer[string]
}

// topicOf is the MQTT topic a telemetry stream is published on: the
// descriptor's Source when it is a plain topic (not a filter with
// wildcards), else the stream id (templated streams).
func topicOf(stream string, d *sample.Descriptor) string {
	if d != nil && d.Source != "" && !strings.ContainsAny(d.Source, "+#") {
		return d.Source
	}
	return stream
}

func (p *Player) plan(h Header) ([]*stream, error) {
	var out []*stream
	for _, si := range h.Streams {
		st := &stream{info: si}
		out = append(out, st)
		d := si.At(h.From)
		switch {
		case d == nil:
			st.note = "no descriptor"
		case d.Kind == sample.KindVideo:
			switch {
			case d.Codec != sample.CodecH264 && d.Codec != sample.CodecH265:
				st.note = fmt.Sprintf("video codec %q cannot be served", d.Codec)
			case p.o.Video == nil:
				st.note = "video not served"
			default:
				vs, err := p.o.Video(si.Stream, *d)
				if err != nil {
					return nil, fmt.Errorf("serve %s: %w", si.Stream, err)
				}
				st.sink, st.video, st.sdp = SinkRTSP, vs, d
				if u, ok := vs.(interface{ URL() string }); ok {
					st.target = u.URL()
				}
			}
		default:
			if p.o.MQTT == nil {
				st.note = "no MQTT broker given"
				continue
			}
			st.sink = SinkMQTT
			st.target = topicOf(si.Stream, si.Latest())
			if p.o.TopicPrefix != "" {
				st.target = strings.TrimRight(p.o.TopicPrefix, "/") + "/" + st.target
			}
		}
	}
	for _, st := range out {
		if st.sink != "" {
			return out, nil
		}
	}
	var why []string
	for _, st := range out {
		why = append(why, st.info.Stream+": "+st.note)
	}
	return out, fmt.Errorf("%w: %s", ErrNothing, strings.Join(why, "; "))
}

// Run replays what open yields until the selection has played (once, or
// until ctx is cancelled with Loop), then waits for the outstanding MQTT
// acknowledgements. Cancelling ctx stops the replay; that is not an error
// (Summary.Interrupted is set). The summary is valid whenever the header
// could be read, even with an error.
//
// Two parts run at once: the read-ahead (readAhead, its own goroutine)
// reads samples ahead of the schedule, and the schedule (schedule.play,
// on this goroutine) sends each when it is due.
func (p *Player) Run(ctx context.Context, open Opener) (*Summary, error) {
	h, first, closeFirst, err := open(ctx)
	if err != nil {
		return nil, err
	}
	sum := &Summary{Episode: h.Episode.ID, Rate: p.o.Rate, Loop: p.o.Loop, From: h.From, To: h.To,
		WindowFrom: h.Episode.Start - h.Episode.Preroll}
	streams, err := p.plan(h)
	if err != nil {
		closeFirst()
		return nil, err
	}
	if p.o.BeforeStart != nil {
		if err := p.o.BeforeStart(ctx, h); err != nil {
			closeFirst()
			if ctx.Err() != nil {
				sum.Interrupted = true
				p.fill(sum, streams, nil)
				return sum, nil
			}
			return nil, err
		}
	}

	ra := startReadAhead(ctx, p.o, h, open, first, closeFirst)
	defer ra.stop()
	// Start the clock with the read-ahead full, so that reading the first
	// samples does not delay them.
	select {
	case <-ra.primed:
	case <-ctx.Done():
	}
	sc := p.newSchedule(h, streams)
	runErr := sc.play(ctx, ra, sum)
	p.waitAcks(&sc.outstanding)
	p.fill(sum, streams, sc.hists)
	return sum, runErr
}

// waitAcks waits for the acknowledgements of what was published, at most
// AckTimeout.
func (p *Player) waitAcks(outstanding *sync.WaitGroup) {
	acked := make(chan struct{})
	go func() { outstanding.Wait(); close(acked) }()
	tm := time.NewTimer(p.o.AckTimeout)
	defer tm.Stop()
	select {
	case <-acked:
	case <-tm.C:
		p.log.Warn("MQTT acknowledgements still outstanding", "after", p.o.AckTimeout)
	}
}

func (p *Player) fill(sum *Summary, streams []*stream, hists map[string]*histogram) {
	for _, st := range streams {
		ss := StreamSummary{Stream: st.info.Stream, Sink: st.sink, Target: st.target, Note: st.note,
			Sent: st.sent, Acked: st.acked.Load(), Failed: st.failed + st.nacked.Load(), Skipped: st.skipped,
			ParamsInserted: st.inserted}
		if d := st.info.Latest(); d != nil {
			ss.Kind = string(d.Kind)
		}
		if e := st.firstErr.Load(); e != nil {
			ss.Error = *e
		}
		sum.Streams = append(sum.Streams, ss)
	}
	sort.Slice(sum.Streams, func(i, j int) bool { return sum.Streams[i].Stream < sum.Streams[j].Stream })
	if hists == nil {
		return
	}
	all := &histogram{}
	for _, name := range []string{SinkMQTT, SinkRTSP} {
		hh := hists[name]
		if hh.n == 0 {
			continue
		}
		all.merge(hh)
		sum.Timing = append(sum.Timing, hh.timing(name))
	}
	sum.Timing = append(sum.Timing, all.timing("all"))
	sum.all = all
}
