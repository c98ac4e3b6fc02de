package mqtt

// Outbound: a Publisher sends payloads to an MQTT broker (replay, and any
// other component that plays samples out over MQTT).
//
// One paho client, clean session, no auto-reconnect: a publisher is for a
// bounded job (a replay), and a lost connection is reported to the caller
// (Publish returns the error, Err reports it) rather than papered over.
//
// QoS 1 publishes are pipelined: Publish hands the message to paho and
// returns; one waiter goroutine takes the paho tokens in publish order and
// calls each message's done callback when the broker's PUBACK arrived (or
// with the error). The tokens waiting for a PUBACK are bounded by
// MaxInflight; full-rule: Publish blocks until the oldest is acknowledged
// (backpressure from a slow broker reaches the caller, nothing is dropped).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/episoded/episoded/internal/redact"
)

// Publisher defaults.
const (
	DefaultPublishInflight = 1000
	DefaultConnectTimeout  = 10 * time.Second
)

// ErrPublisherClosed is returned by Publish after Close.
var ErrPublisherClosed = errors.New("mqtt: publisher closed")

// PublisherOptions configure a Publisher.
type PublisherOptions struct {
	// URL is tcp://, mqtt://, ssl://, tls://, mqtts://, ws:// or wss://
	// host:port (required). User info in the URL is used as Username and
	// Password when those are empty, and is never logged.
	URL string
	// ClientID defaults to "episoded-pub-" and a random suffix.
	ClientID string
	// Username and Password authenticate to the broker.
	Username, Password string
	// TLS applies to ssl://, tls://, mqtts:// and wss:// URLs.
	TLS TLSOptions
	// KeepAlive is the MQTT keepalive (default 30s).
	KeepAlive time.Duration
	// ConnectTimeout bounds Connect (default 10s).
	ConnectTimeout time.Duration
	// MaxInflight bounds QoS 1 messages awaiting their PUBACK (default
	// 1000); Publish blocks beyond it.
	MaxInflight int
	// Logger is tagged with component=devices.mqtt.publish; nil discards.
	Logger *slog.Logger
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (o *PublisherOptions) EnsureDefaults() {
	if o.KeepAlive == 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = DefaultPublishInflight
	}
	if o.ClientID == "" {
		o.ClientID = fmt.Sprintf("episoded-pub-%08x", rand.Uint32())
	}
}

// Validate reports every problem at once. User info in the URL is allowed
// here (it is used as Username and Password). It expects EnsureDefaults to
// have run.
func (o *PublisherOptions) Validate() error {
	errs := connProblems(o.URL, o.KeepAlive, o.TLS)
	if o.ConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("connect_timeout: %s is negative", o.ConnectTimeout))
	}
	if o.MaxInflight < 1 {
		errs = append(errs, fmt.Errorf("max_inflight: %d is not positive", o.MaxInflight))
	}
	return errors.Join(errs...)
}

// Publisher publishes messages to one broker. NewPublisher starts nothing;
// Connect connects and starts the waiter; Close drains and disconnects.
type Publisher struct {
	o      PublisherOptions
	url    string // without user info
	log    *slog.Logger
	client paho.Client

	pending chan pendingPub
	stop    chan struct{}
	wg      sync.WaitGroup
	lost    atomic.Pointer[error]
	closed  atomic.Bool
	gone    atomic.Bool // disconnected: tokens still waiting will not complete
	// inflight counts messages handed to paho whose done is not called yet.
	inflight atomic.Int64
}

type pendingPub struct {
	tok  paho.Token
	done func(error)
}

// NewPublisher checks the options. The password never appears in an error.
func NewPublisher(o PublisherOptions) (*Publisher, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("mqtt publisher options: %w", err)
	}
	u, _ := url.Parse(o.URL) // checked by connProblems
	if u.User != nil {
		if o.Username == "" {
			o.Username = u.User.Username()
		}
		if pw, ok := u.User.Password(); ok && o.Password == "" {
			o.Password = pw
		}
		u.User = nil
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Publisher{
		o: o, url: u.String(),
		log:     log.With("component", "devices.mqtt.publish", "url", u.String()),
		pending: make(chan pendingPub, o.MaxInflight),
		stop:    make(chan struct{}),
	}
	return p, nil
}

// URL returns the broker URL without credentials.
func (p *Publisher) URL() string { return p.url }

// Connect connects to the broker (bounded by ConnectTimeout and ctx).
func (p *Publisher) Connect(ctx context.Context) error {
	u, _ := url.Parse(p.url)
	opts := paho.NewClientOptions().
		AddBroker(p.url).
		SetClientID(p.o.ClientID).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(true).
		SetKeepAlive(p.o.KeepAlive).
		SetPingTimeout(max(p.o.KeepAlive/2, time.Second)).
		SetConnectTimeout(p.o.ConnectTimeout).
		SetWriteTimeout(p.o.KeepAlive).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			err = p.clean(fmt.Errorf("mqtt connection to %s lost: %w", p.url, err))
			p.lost.Store(&err)
			p.log.Warn("mqtt connection lost", "err", err)
		})
	if p.o.Username != "" {
		opts.SetUsername(p.o.Username)
	}
	if p.o.Password != "" {
		opts.SetPassword(p.o.Password)
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts", "wss":
		tc, err := p.o.TLS.config(u.Hostname())
		if err != nil {
			return err
		}
		opts.SetTLSConfig(tc)
	}
	p.client = paho.NewClient(opts)
	tok := p.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		<-tok.Done()
		p.client.Disconnect(0)
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return p.clean(fmt.Errorf("connect to MQTT broker %s: %w", p.url, err))
	}
	p.wg.Go(p.waiter)
	p.log.Info("mqtt publisher connected", "client_id", p.o.ClientID)
	return nil
}

// Err returns the error that ended the connection, or nil.
func (p *Publisher) Err() error {
	if e := p.lost.Load(); e != nil {
		return *e
	}
	return nil
}

// Publish sends payload to topic with the given QoS (0 or 1), not
// retained. done, if not nil, is called once from the waiter goroutine:
// with nil when the broker acknowledged a QoS 1 message (for QoS 0, when
// paho wrote it), else with the error. Publish returns an error, and does
// not call done, when the connection is lost or the publisher is closed.
// It blocks while MaxInflight messages await their acknowledgement. The
// payload must not be modified afterwards.
func (p *Publisher) Publish(topic string, qos byte, payload []byte, done func(error)) error {
	if p.closed.Load() || p.client == nil {
		return ErrPublisherClosed
	}
	if err := p.Err(); err != nil {
		return err
	}
	p.inflight.Add(1)
	tok := p.client.Publish(topic, qos, false, payload)
	select {
	case p.pending <- pendingPub{tok: tok, done: done}:
		return nil
	case <-p.stop:
		p.inflight.Add(-1)
		return ErrPublisherClosed
	}
}

func (p *Publisher) waiter() {
	for {
		select {
		case pp := <-p.pending:
			p.wait(pp)
		case <-p.stop:
			// Drain what Close let through.
			for {
				select {
				case pp := <-p.pending:
					p.wait(pp)
				default:
					return
				}
			}
		}
	}
}

func (p *Publisher) wait(pp pendingPub) {
	defer p.inflight.Add(-1)
	for !pp.tok.WaitTimeout(50 * time.Millisecond) {
		err := p.Err()
		if err == nil && p.gone.Load() {
			err = errors.New("mqtt: publisher closed before the broker acknowledged the message")
		}
		if err != nil {
			if pp.done != nil {
				pp.done(err)
			}
			return
		}
	}
	if pp.done != nil {
		pp.done(p.clean(pp.tok.Error()))
	}
}

// Close waits up to timeout for the acknowledgements of messages already
// published, then disconnects; every done callback has been called when it
// returns. It must not be called concurrently with Publish.
func (p *Publisher) Close(timeout time.Duration) {
	if p.closed.Swap(true) {
		return
	}
	if p.client == nil {
		return
	}
	deadline := time.Now().Add(timeout)
	for p.inflight.Load() > 0 && time.Now().Before(deadline) && p.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	p.client.Disconnect(250)
	p.gone.Store(true)
	close(p.stop)
	p.wg.Wait()
	p.log.Info("mqtt publisher disconnected")
}

func (p *Publisher) clean(err error) error {
	if err == nil || p.o.Password == "" {
		return err
	}
	msg := redact.String(err.Error(), p.o.Password)
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}
