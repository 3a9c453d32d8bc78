package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
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
	// The rest is only for functions run as processes (http, exec).
	Code    *CodeSpec         `json:"code,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"`
	Workdir string            `json:"workdir,omitempty"`
	Limits  *LimitsSpec       `json:"limits,omitempty"`
}

// CodeSpec is the uploaded code of a Spec.
type CodeSpec struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// LimitsSpec is the limits of a Spec; memory in bytes, cpu in cores.
type LimitsSpec struct {
	Memory    int64   `json:"memory,omitempty"`
	CPU       float64 `json:"cpu,omitempty"`
	OpenFiles uint64  `json:"open_files,omitempty"`
}

// HTTPSpec is an http handler of a Spec; start_timeout is a Go duration,
// processes "shared" or "per-slot".
type HTTPSpec struct {
	Command      []string `json:"command"`
	Listen       string   `json:"listen"`
	Readiness    string   `json:"readiness,omitempty"`
	Processes    string   `json:"processes"`
	StartTimeout string   `json:"start_timeout"`
}

// ExecSpec is an exec handler of a Spec.
type ExecSpec struct {
	Command []string `json:"command"`
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
	Builtin string    `json:"builtin,omitempty"`
	HTTP    *HTTPSpec `json:"http,omitempty"`
	Exec    *ExecSpec `json:"exec,omitempty"`
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
	s := Spec{
		Name:        f.Name,
		Description: f.Description,
		Handler:     HandlerSpec{Builtin: f.Handler.Builtin},
		Timeout:     f.Timeout.String(),
		Concurrency: f.Concurrency,
		Public:      f.Public,
		Permissions: f.Permissions,
		Async:       async,
	}
	if h := f.Handler.HTTP; h != nil {
		processes := "shared"
		if h.PerSlot {
			processes = "per-slot"
		}
		s.Handler.HTTP = &HTTPSpec{Command: h.Command, Listen: h.Listen, Readiness: h.Readiness, Processes: processes, StartTimeout: h.StartTimeout.String()}
	}
	if h := f.Handler.Exec; h != nil {
		s.Handler.Exec = &ExecSpec{Command: h.Command}
	}
	if p := f.Process; f.Handler.RunsProcess() {
		if p.Code != (CodeRef{}) {
			s.Code = &CodeSpec{Digest: p.Code.Digest, Size: p.Code.Size}
		}
		s.Env, s.Secrets, s.Workdir = p.Env, p.Secrets, p.Workdir
		if p.Limits != (Limits{}) {
			s.Limits = &LimitsSpec{Memory: p.Limits.Memory, CPU: p.Limits.CPU, OpenFiles: p.Limits.OpenFiles}
		}
	}
	return s
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
	handler, process := s.process(bad)
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
		Handler:     handler,
		Timeout:     timeout,
		Concurrency: s.Concurrency,
		Public:      s.Public,
		Permissions: slices.Clone(s.Permissions),
		Async:       async,
		Process:     process,
	}, nil
}

// process checks the handler and the settings of a function run as
// processes, reporting problems to bad.
func (s Spec) process(bad func(string, ...any)) (Handler, Process) {
	h := s.Handler
	kinds := 0
	for _, set := range []bool{h.Builtin != "", h.HTTP != nil, h.Exec != nil} {
		if set {
			kinds++
		}
	}
	if kinds == 0 {
		bad("no handler: set one of %s", strings.Join(handlerKinds, ", "))
		return Handler{}, Process{}
	}
	if kinds > 1 {
		bad("set exactly one handler kind, one of: %s", strings.Join(handlerKinds, ", "))
		return Handler{}, Process{}
	}
	handler := Handler{Builtin: h.Builtin}
	switch {
	case h.HTTP != nil:
		hh := &HTTPHandler{Command: slices.Clone(h.HTTP.Command), Listen: h.HTTP.Listen, Readiness: h.HTTP.Readiness}
		if h.HTTP.Listen != ListenPort && h.HTTP.Listen != ListenUnix {
			bad("invalid http listen %q", h.HTTP.Listen)
		}
		if h.HTTP.Readiness != "" && !validReadiness(h.HTTP.Readiness) {
			bad("invalid http readiness path %q", h.HTTP.Readiness)
		}
		switch h.HTTP.Processes {
		case "shared":
		case "per-slot":
			hh.PerSlot = true
		default:
			bad("invalid http processes %q", h.HTTP.Processes)
		}
		t, err := time.ParseDuration(h.HTTP.StartTimeout)
		if err != nil || t <= 0 || t > MaxStartTimeout {
			bad("invalid http start_timeout %q", h.HTTP.StartTimeout)
		}
		hh.StartTimeout = t
		handler.HTTP = hh
	case h.Exec != nil:
		handler.Exec = &ExecHandler{Command: slices.Clone(h.Exec.Command)}
	}
	if !handler.RunsProcess() {
		if s.Code != nil || s.Env != nil || s.Secrets != nil || s.Workdir != "" || s.Limits != nil {
			bad("a built-in takes no code, env, secrets, workdir or limits")
		}
		return handler, Process{}
	}
	if p := commandProblem(handler.Command()); p != "" {
		bad("%s", p)
	}
	var p Process
	switch {
	case s.Code == nil:
		bad("no code: an %s handler needs the digest of its uploaded source (shoal deploy uploads it)", handler.Kind())
	case !ValidDigest(s.Code.Digest) || s.Code.Size <= 0:
		bad("invalid code digest %q or size %d", s.Code.Digest, s.Code.Size)
	default:
		p.Code = CodeRef{Digest: s.Code.Digest, Size: s.Code.Size}
	}
	for k, v := range s.Env {
		if msg := envNameProblem(k); msg != "" {
			bad("env: %s", msg)
		} else if strings.ContainsRune(v, 0) {
			bad("env %s: the value contains a NUL byte", k)
		}
	}
	for k, v := range s.Secrets {
		if msg := envNameProblem(k); msg != "" {
			bad("secrets: %s", msg)
		} else if !ValidSecretName(v) {
			bad("secrets %s: invalid secret name %q", k, v)
		} else if _, dup := s.Env[k]; dup {
			bad("%s is set in both env and secrets", k)
		}
	}
	if len(s.Env)+len(s.Secrets) > MaxEnv {
		bad("%d variables in env and secrets, more than %d", len(s.Env)+len(s.Secrets), MaxEnv)
	}
	if msg := workdirProblem(s.Workdir); s.Workdir != "" && msg != "" {
		bad("%s", msg)
	}
	p.Env, p.Secrets, p.Workdir = maps.Clone(s.Env), maps.Clone(s.Secrets), s.Workdir
	if l := s.Limits; l != nil {
		p.Limits = Limits{Memory: l.Memory, CPU: l.CPU, OpenFiles: l.OpenFiles}
		for _, msg := range limitsProblems(p.Limits) {
			bad("limits: %s", msg)
		}
	}
	return handler, p
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
	return a.Name == b.Name && a.Description == b.Description && a.Handler.same(b.Handler) &&
		a.Timeout == b.Timeout && a.Concurrency == b.Concurrency && a.Public == b.Public &&
		slices.Equal(a.Permissions, b.Permissions) &&
		a.Async.same(b.Async) && a.Process.same(b.Process)
}
