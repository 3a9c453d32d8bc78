package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Spec is a function's definition as JSON: how the function catalog in
// NATS KV stores it and how the gateway's /system/functions shows it. It
// carries what fn.yaml declares, with defaults filled in, and nothing of
// where it was declared.
type Spec struct {
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	Handler     HandlerSpec `json:"handler"`
	// Timeout is a Go duration, e.g. "30s".
	Timeout     string   `json:"timeout"`
	Concurrency int      `json:"concurrency"`
	Public      bool     `json:"public"`
	Permissions []string `json:"permissions,omitempty"`
	// Async is left out when the function keeps the default setting.
	Async *AsyncSpec `json:"async,omitempty"`
}

// AsyncSpec is the async setting of a Spec, in full; delays are Go
// durations.
type AsyncSpec struct {
	Enabled    bool     `json:"enabled"`
	MaxDeliver int      `json:"max_deliver"`
	Backoff    []string `json:"backoff"`
}

// HandlerSpec is the handler of a Spec; exactly one kind is set.
type HandlerSpec struct {
	Builtin string `json:"builtin,omitempty"`
}

// Spec returns the function's definition as JSON-ready data.
func (f Function) Spec() Spec {
	var async *AsyncSpec
	if !f.Async.same(Async{}) {
		delays := f.Async.Delays()
		backoff := make([]string, len(delays))
		for i, d := range delays {
			backoff[i] = d.String()
		}
		async = &AsyncSpec{Enabled: !f.Async.Disabled, MaxDeliver: f.Async.Attempts(), Backoff: backoff}
	}
	return Spec{
		Name:        f.Name,
		Description: f.Description,
		Handler:     HandlerSpec{Builtin: f.Handler.Builtin},
		Timeout:     f.Timeout.String(),
		Concurrency: f.Concurrency,
		Public:      f.Public,
		Permissions: f.Permissions,
		Async:       async,
	}
}

// Function checks a definition with the rules fn.yaml follows and returns
// the function. Which built-ins exist is not checked: that depends on the
// runner (one without the handler does not serve the function).
func (s Spec) Function() (Function, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !nameRE.MatchString(s.Name) {
		bad("invalid function name %q", s.Name)
	}
	if len(s.Description) > maxDescription {
		bad("description too long (%d bytes)", len(s.Description))
	}
	if s.Handler.Builtin == "" {
		bad("no handler")
	}
	timeout, err := time.ParseDuration(s.Timeout)
	switch {
	case err != nil:
		bad("invalid timeout %q", s.Timeout)
	case timeout <= 0 || timeout > MaxTimeout:
		bad("timeout %s out of range (0s, %s]", timeout, MaxTimeout)
	}
	if s.Concurrency < 1 || s.Concurrency > MaxConcurrency {
		bad("concurrency %d out of range [1, %d]", s.Concurrency, MaxConcurrency)
	}
	for i, p := range s.Permissions {
		if !ValidPermission(p) {
			bad("invalid permission %q", p)
		} else if slices.Contains(s.Permissions[:i], p) {
			bad("permission %q listed twice", p)
		}
	}
	if s.Public && len(s.Permissions) > 0 {
		bad("a public function cannot require permissions")
	}
	var async Async
	if a := s.Async; a != nil {
		async = Async{Disabled: !a.Enabled, MaxDeliver: a.MaxDeliver, Backoff: []time.Duration{}}
		if a.MaxDeliver < 1 || a.MaxDeliver > MaxMaxDeliver {
			bad("async max_deliver %d out of range [1, %d]", a.MaxDeliver, MaxMaxDeliver)
		}
		if len(a.Backoff) > MaxBackoffSteps {
			bad("async backoff has %d delays, more than %d", len(a.Backoff), MaxBackoffSteps)
		}
		for _, b := range a.Backoff {
			d, err := time.ParseDuration(b)
			if err != nil || d < 0 || d > MaxBackoff {
				bad("invalid async backoff delay %q", b)
				continue
			}
			async.Backoff = append(async.Backoff, d)
		}
	}
	if len(errs) > 0 {
		return Function{}, fmt.Errorf("function %q: %w", s.Name, errors.Join(errs...))
	}
	return Function{
		Name:        s.Name,
		Description: s.Description,
		Handler:     Handler{Builtin: s.Handler.Builtin},
		Timeout:     timeout,
		Concurrency: s.Concurrency,
		Public:      s.Public,
		Permissions: slices.Clone(s.Permissions),
		Async:       async,
	}, nil
}

// MarshalSpec encodes a function's definition as JSON.
func MarshalSpec(f Function) ([]byte, error) {
	b, err := json.Marshal(f.Spec())
	if err != nil {
		return nil, fmt.Errorf("encode function %q: %w", f.Name, err)
	}
	return b, nil
}

// UnmarshalSpec decodes and checks a definition encoded by MarshalSpec.
// Unknown fields are errors: a definition written by a newer Shoal that
// this one does not understand is refused rather than run half-understood.
func UnmarshalSpec(data []byte) (Function, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return Function{}, fmt.Errorf("decode function definition: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Function{}, errors.New("decode function definition: trailing data after the JSON object")
	}
	return s.Function()
}

// SameDefinition reports whether two functions are defined alike, whatever
// file or line declared them.
func SameDefinition(a, b Function) bool {
	return a.Name == b.Name && a.Description == b.Description && a.Handler == b.Handler &&
		a.Timeout == b.Timeout && a.Concurrency == b.Concurrency && a.Public == b.Public &&
		slices.Equal(a.Permissions, b.Permissions) &&
		a.Async.same(b.Async)
}
