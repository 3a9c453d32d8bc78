package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/platform/callback"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/runner"
)

// asyncLimitFlags are the limits of the asynchronous calls' streams and
// bucket, applied by the commands that set them up (up, deploy).
type asyncLimitFlags struct {
	l        calls.Limits
	maxBytes byteSize
	dlqBytes byteSize
}

func (a *asyncLimitFlags) register(fs *pflag.FlagSet) {
	a.l = calls.DefaultLimits()
	a.maxBytes, a.dlqBytes = byteSize(a.l.MaxBytes), byteSize(a.l.DLQMaxBytes)
	fs.Int64Var(&a.l.MaxQueued, "async-max-queued", a.l.MaxQueued, "most asynchronous calls waiting; past it (or --async-max-bytes) submissions get 429 queue_full")
	fs.Var(&a.maxBytes, "async-max-bytes", "most bytes of asynchronous calls waiting")
	fs.DurationVar(&a.l.MaxAge, "async-max-age", a.l.MaxAge, "a call waiting longer is dropped (0: never); keep it far above any backlog")
	fs.DurationVar(&a.l.Dedupe, "async-dedupe-window", a.l.Dedupe, "JetStream's de-duplication window for Idempotency-Key (beyond it, the call's record still de-duplicates)")
	fs.DurationVar(&a.l.ResultsTTL, "async-results-ttl", a.l.ResultsTTL, "how long a call's record and result are kept after its last change")
	fs.DurationVar(&a.l.DLQMaxAge, "async-dlq-max-age", a.l.DLQMaxAge, "how long a dead-lettered call is kept")
	fs.Var(&a.dlqBytes, "async-dlq-max-bytes", "most bytes of dead-lettered calls (the oldest go first)")
}

// limits returns the configured limits with replicas.
func (a *asyncLimitFlags) limits(replicas int) (calls.Limits, error) {
	l := a.l
	l.MaxBytes, l.DLQMaxBytes, l.Replicas = int64(a.maxBytes), int64(a.dlqBytes), replicas
	if err := l.Check(); err != nil {
		return l, fmt.Errorf("asynchronous call limits: %w", err)
	}
	return l, nil
}

// over returns cur with the limits whose flags were given on the command
// line in place: what `shoal deploy` applies to limits set up earlier, so
// that a routine deploy does not reset an operator's limits to the
// defaults.
func (a *asyncLimitFlags) over(cur calls.Limits, fs *pflag.FlagSet, replicas int) (calls.Limits, error) {
	given, err := a.limits(replicas)
	if err != nil {
		return given, err
	}
	l := cur
	l.Replicas = replicas
	for flag, set := range map[string]func(){
		"async-max-queued":    func() { l.MaxQueued = given.MaxQueued },
		"async-max-bytes":     func() { l.MaxBytes = given.MaxBytes },
		"async-max-age":       func() { l.MaxAge = given.MaxAge },
		"async-dedupe-window": func() { l.Dedupe = given.Dedupe },
		"async-results-ttl":   func() { l.ResultsTTL = given.ResultsTTL },
		"async-dlq-max-age":   func() { l.DLQMaxAge = given.DLQMaxAge },
		"async-dlq-max-bytes": func() { l.DLQMaxBytes = given.DLQMaxBytes },
	} {
		if fs.Changed(flag) {
			set()
		}
	}
	// The window read back is clamped to the max age it was set up with;
	// a new max age without a new window takes the window given.
	if fs.Changed("async-max-age") && !fs.Changed("async-dedupe-window") && cur.Dedupe == cur.MaxAge {
		l.Dedupe = given.Dedupe
	}
	if err := l.Check(); err != nil {
		return l, fmt.Errorf("asynchronous call limits: %w", err)
	}
	return l, nil
}

// callbackFlags configure the callbacks of asynchronous calls: which URLs
// a submission may give (gateway) and how they are delivered (runner).
type callbackFlags struct {
	allow    []string
	timeout  time.Duration
	attempts int
	backoff  []time.Duration
}

func (c *callbackFlags) register(fs *pflag.FlagSet, delivery bool) {
	fs.StringSliceVar(&c.allow, "callback-allow", nil, "callback destinations allowed besides public addresses: CIDR prefixes, addresses or host names (*.example.com); e.g. 10.0.0.0/8,hooks.internal")
	if !delivery {
		return
	}
	fs.DurationVar(&c.timeout, "callback-timeout", 10*time.Second, "time limit of one callback delivery")
	fs.IntVar(&c.attempts, "callback-attempts", 5, "deliveries tried per callback before it is recorded as failed")
	fs.DurationSliceVar(&c.backoff, "callback-backoff", []time.Duration{time.Second, 10 * time.Second, time.Minute, 5 * time.Minute}, "delays between callback deliveries (the last repeats)")
}

// policy parses the allow-list.
func (c *callbackFlags) policy() (*callback.Policy, error) {
	p, err := callback.ParsePolicy(c.allow)
	if err != nil {
		return nil, fmt.Errorf("--callback-allow: %w", err)
	}
	return p, nil
}

func (c *callbackFlags) check() error {
	var errs []error
	if _, err := c.policy(); err != nil {
		errs = append(errs, err)
	}
	if c.timeout < 100*time.Millisecond || c.timeout > 5*time.Minute {
		errs = append(errs, fmt.Errorf("--callback-timeout %s: want 100ms to 5m", c.timeout))
	}
	if c.attempts < 1 || c.attempts > 100 {
		errs = append(errs, fmt.Errorf("--callback-attempts %d: want 1 to 100", c.attempts))
	}
	if len(c.backoff) == 0 {
		errs = append(errs, errors.New("--callback-backoff: give at least one delay"))
	}
	for _, d := range c.backoff {
		if d < 0 || d > 12*time.Hour {
			errs = append(errs, fmt.Errorf("--callback-backoff %s: want 0s to 12h", d))
		}
	}
	return errors.Join(errs...)
}

// args are the flags that pass the configuration on to a worker.
func (c *callbackFlags) args() []string {
	backoff := make([]string, len(c.backoff))
	for i, d := range c.backoff {
		backoff[i] = d.String()
	}
	args := []string{
		"--callback-timeout", c.timeout.String(),
		"--callback-attempts", fmt.Sprint(c.attempts),
		"--callback-backoff", strings.Join(backoff, ","),
	}
	if len(c.allow) > 0 {
		args = append(args, "--callback-allow", strings.Join(c.allow, ","))
	}
	return args
}

// runnerAsyncFlags configure a runner's asynchronous calls.
type runnerAsyncFlags struct {
	on        bool
	ackWait   time.Duration
	callbacks callbackFlags
}

func (r *runnerAsyncFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&r.on, "async", true, "take asynchronous calls of the functions served, and deliver callbacks")
	fs.DurationVar(&r.ackWait, "async-ack-wait", calls.DefaultAckWait, "how long a call whose runner died waits before another runner takes it (a running call extends it)")
	r.callbacks.register(fs, true)
}

func (r *runnerAsyncFlags) check() error {
	var errs []error
	if r.ackWait < time.Second || r.ackWait > 10*time.Minute {
		errs = append(errs, fmt.Errorf("--async-ack-wait %s: want 1s to 10m", r.ackWait))
	}
	return errors.Join(append(errs, r.callbacks.check())...)
}

// config is the runner's AsyncConfig; nil when asynchronous calls are off.
func (r *runnerAsyncFlags) config() (*runner.AsyncConfig, error) {
	if !r.on {
		return nil, nil
	}
	p, err := r.callbacks.policy()
	if err != nil {
		return nil, err
	}
	return &runner.AsyncConfig{AckWait: r.ackWait, Callbacks: calls.CallbackConfig{
		Policy: p, Timeout: r.callbacks.timeout, Attempts: r.callbacks.attempts, Backoff: r.callbacks.backoff,
		Logger: logger.With("component", "callbacks"),
	}}, nil
}

// args are the flags that pass the configuration on to a worker.
func (r *runnerAsyncFlags) args() []string {
	return append([]string{"--async=" + fmt.Sprint(r.on), "--async-ack-wait", r.ackWait.String()}, r.callbacks.args()...)
}
