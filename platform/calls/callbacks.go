package calls

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/callback"
)

// CallbackConfig configures the delivery of callbacks.
type CallbackConfig struct {
	// Policy says which URLs may be called; nil is the default policy
	// (public addresses only).
	Policy *callback.Policy
	// Timeout bounds one delivery; 0 means 10 s.
	Timeout time.Duration
	// Attempts is the most deliveries tried; 0 means 5.
	Attempts int
	// Backoff are the delays between attempts (the last repeats); nil
	// means 1s, 10s, 1m, 5m.
	Backoff []time.Duration
	// Concurrency bounds the deliveries in progress at once; 0 means 16.
	Concurrency int
	// Logger receives the log; nil discards it.
	Logger *slog.Logger
}

func (c CallbackConfig) withDefaults() CallbackConfig {
	if c.Policy == nil {
		c.Policy, _ = callback.ParsePolicy(nil) // the default policy parses
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Attempts <= 0 {
		c.Attempts = 5
	}
	if c.Backoff == nil {
		c.Backoff = []time.Duration{time.Second, 10 * time.Second, time.Minute, 5 * time.Minute}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 16
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// DeliverCallbacks POSTs queued results to their callback URLs until ctx
// ends, and records each delivery's outcome in the call's record. A
// delivery that fails with a retryable error is tried again after the
// back-off, up to the configured attempts; every runner shares the work.
// It returns when ctx ends and the deliveries under way have finished.
func DeliverCallbacks(ctx context.Context, js jetstream.JetStream, cfg CallbackConfig) {
	cfg = cfg.withDefaults()
	d := &deliverer{js: js, q: NewQueue(js), cfg: cfg, client: cfg.Policy.Client(cfg.Timeout)}
	var wg sync.WaitGroup
	defer wg.Wait()
	var inFlight atomic.Int64
	wake := make(chan struct{}, 1)
	fetchLoop{
		log: cfg.Logger.With("stream", CallbackStream),
		open: func(ctx context.Context) (jetstream.Consumer, error) {
			return js.CreateOrUpdateConsumer(ctx, CallbackStream, jetstream.ConsumerConfig{
				Durable:       CallbackConsumer,
				Description:   "Shoal: callback deliveries",
				AckPolicy:     jetstream.AckExplicitPolicy,
				AckWait:       cfg.Timeout + 20*time.Second,
				MaxDeliver:    -1,
				MaxAckPending: -1,
			})
		},
		take: func() int { return cfg.Concurrency - int(inFlight.Load()) },
		done: func(int) {},
		wake: wake,
		handle: func(msg jetstream.Msg) {
			inFlight.Add(1)
			wg.Go(func() {
				defer func() {
					inFlight.Add(-1)
					select {
					case wake <- struct{}{}:
					default:
					}
				}()
				d.deliver(msg)
			})
		},
	}.run(ctx)
}

type deliverer struct {
	js     jetstream.JetStream
	q      *Queue
	cfg    CallbackConfig
	client *http.Client
}

// deliver makes one delivery attempt of a queued callback and settles it.
func (d *deliverer) deliver(msg jetstream.Msg) {
	h := msg.Headers()
	id, url := h.Get(HeaderCallID), h.Get(HeaderCallback)
	attempt := 1
	if meta, err := msg.Metadata(); err == nil {
		attempt = int(meta.NumDelivered)
	}
	log := d.cfg.Logger.With("call", id, "function", h.Get(HeaderFunction), "callback", callback.Redact(url), "attempt", attempt)
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeout+saveTimeout)
	defer cancel()
	header := http.Header{}
	header.Set("X-Call-Id", id)
	header.Set("X-Call-Status", h.Get(HeaderCallStatus))
	header.Set("X-Shoal-Function", h.Get(HeaderFunction))
	err := callback.Deliver(ctx, d.client, url, header, msg.Data())
	state := &Callback{URL: callback.Redact(url), State: CallbackDelivered, Attempts: attempt}
	switch {
	case err == nil:
		state.Delivered = time.Now().UTC()
		log.Info("callback delivered")
	case callback.Retryable(err) && attempt < d.cfg.Attempts:
		state.State, state.LastError = CallbackPending, publicError(err)
		d.update(ctx, id, state, log)
		delay := d.cfg.Backoff[min(attempt, len(d.cfg.Backoff))-1]
		log.Warn("callback failed; retrying", "error", err, "in", delay)
		if err := msg.NakWithDelay(delay); err != nil {
			log.Warn("cannot schedule the callback's retry; the ack wait will", "error", err)
		}
		return
	default:
		state.State, state.LastError = CallbackFailed, publicError(err)
		log.Warn("callback failed for good", "error", err)
	}
	d.update(ctx, id, state, log)
	if err := msg.DoubleAck(ctx); err != nil {
		log.Warn("cannot acknowledge a callback; it may be delivered again", "error", err)
	}
}

// publicError is what a call's record says of a failed delivery. A
// refusal by the policy says no more than that: its details (what a name
// resolved to) would map the internal network for whoever reads the
// record; the runner's log has them.
func publicError(err error) string {
	if errors.Is(err, callback.ErrRefused) {
		return "the callback URL's address is not allowed by the callback policy (--callback-allow)"
	}
	return err.Error()
}

// update writes the callback's state into the call's record, unless the
// record is gone (expired).
func (d *deliverer) update(ctx context.Context, id string, state *Callback, log *slog.Logger) {
	_, _, err := d.q.change(ctx, id, func(cur *Record) *Record {
		if cur != nil {
			cur.Callback = state
		}
		return cur // none: expired, nothing to record
	})
	if err != nil {
		log.Warn("cannot record the callback's state", "error", err)
	}
}
