// Package manifest reads and validates fn.yaml, the file that declares a
// Shoal deployment's functions.
//
// Loading is strict: an unknown key, a value of the wrong type, a duplicate
// function, a bad duration or a handler this build does not have is an
// error that names the file, line and column and says what was expected.
// Every problem in a file is reported at once, not only the first one.
// Fields that are absent take the documented defaults below; fields that
// are present are never silently replaced.
//
// The schema is documented in docs/fn-yaml.md.
package manifest

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// SchemaVersion is the fn.yaml schema version this build reads; a manifest
// declares it in its top-level `version` key.
const SchemaVersion = 1

// Defaults and bounds for function settings.
const (
	DefaultTimeout     = 30 * time.Second
	MaxTimeout         = 15 * time.Minute
	DefaultConcurrency = 100
	MaxConcurrency     = 10000
	// DefaultMaxDeliver is how many attempts an asynchronous call gets
	// unless fn.yaml says otherwise: one try and two retries, as AWS
	// Lambda gives asynchronous invocations.
	DefaultMaxDeliver = 3
	MaxMaxDeliver     = 100
	// MaxBackoff bounds one delay between attempts; MaxBackoffSteps the
	// length of the list.
	MaxBackoff      = 12 * time.Hour
	MaxBackoffSteps = 20
	maxDescription  = 1024
	// MaxPermission is the longest permission name, in bytes.
	MaxPermission = 128
)

// Manifest is a validated fn.yaml.
type Manifest struct {
	// File is the name the manifest was loaded from, used in messages.
	File string
	// Version is the schema version the file declared.
	Version int
	// Functions in declaration order; names are unique.
	Functions []Function
}

// Function is one function declared in a manifest.
type Function struct {
	// Name is the function's name: the key under `functions`, also its
	// route (/function/NAME) and NATS subject (fn.NAME).
	Name        string
	Description string
	Handler     Handler
	// Timeout bounds one invocation.
	Timeout time.Duration
	// Concurrency is the most invocations one runner runs at once.
	Concurrency int
	// Public functions need no token; others need a valid token that holds
	// every permission listed in Permissions.
	Public      bool
	Permissions []string
	// Async configures asynchronous calls (POST /async-function/NAME).
	Async Async
	// Process holds the settings of a function run as processes (http
	// and exec handlers); zero for a built-in.
	Process Process
	// Pos is where the function is declared.
	Pos Position
}

// Async configures a function's asynchronous calls: queued durably on
// JetStream, run at least once, retried on failure, dead-lettered after
// the last attempt. Its zero value is the default: enabled, with
// DefaultMaxDeliver attempts and the DefaultBackoff delays.
type Async struct {
	// Disabled refuses asynchronous calls (fn.yaml: enabled: false).
	Disabled bool
	// MaxDeliver is the most attempts a call gets, the first included;
	// 0 means DefaultMaxDeliver.
	MaxDeliver int
	// Backoff are the delays before the second, third, ... attempt after
	// a failed one; the last repeats. nil means DefaultBackoff; an empty
	// list retries at once.
	Backoff []time.Duration
}

// DefaultBackoff is the delay list of a function whose fn.yaml sets none:
// a minute, then two, as AWS Lambda waits between asynchronous retries.
func DefaultBackoff() []time.Duration { return []time.Duration{time.Minute, 2 * time.Minute} }

// Attempts is the most attempts a call gets.
func (a Async) Attempts() int {
	if a.MaxDeliver == 0 {
		return DefaultMaxDeliver
	}
	return a.MaxDeliver
}

// Delays is the backoff list in effect.
func (a Async) Delays() []time.Duration {
	if a.Backoff == nil {
		return DefaultBackoff()
	}
	return a.Backoff
}

// Delay is the wait before the attempt after attempt n (1 for the
// first) failed.
func (a Async) Delay(n int) time.Duration {
	d := a.Delays()
	if len(d) == 0 || n < 1 {
		return 0
	}
	return d[min(n, len(d))-1]
}

// same reports whether two settings behave alike.
func (a Async) same(b Async) bool {
	return a.Disabled == b.Disabled && a.Attempts() == b.Attempts() && slices.Equal(a.Delays(), b.Delays())
}

// Handler says what runs a function. Exactly one kind is set.
type Handler struct {
	// Builtin names a Go function compiled into the shoal binary.
	Builtin string
	// HTTP runs the function's own web server.
	HTTP *HTTPHandler
	// Exec runs a command per invocation.
	Exec *ExecHandler
}

// Kind names the handler kind that is set, as written in fn.yaml.
func (h Handler) Kind() string {
	switch {
	case h.Builtin != "":
		return "builtin"
	case h.HTTP != nil:
		return "http"
	case h.Exec != nil:
		return "exec"
	}
	return ""
}

// String describes the handler as it is written in fn.yaml.
func (h Handler) String() string {
	switch {
	case h.Builtin != "":
		return "builtin:" + h.Builtin
	case h.RunsProcess():
		return h.Kind() + ":" + strings.Join(h.Command(), " ")
	}
	return "none"
}

// Lookup returns the function with the given name.
func (m *Manifest) Lookup(name string) (Function, bool) {
	for _, f := range m.Functions {
		if f.Name == name {
			return f, true
		}
	}
	return Function{}, false
}

// Names returns the function names in declaration order.
func (m *Manifest) Names() []string {
	names := make([]string, len(m.Functions))
	for i, f := range m.Functions {
		names[i] = f.Name
	}
	return names
}

// Options tell the loader what this build can run.
type Options struct {
	// Builtins are the names of the built-in handlers this build has; a
	// function naming any other is an error.
	Builtins []string
}

// Load reads and validates the manifest at path.
func Load(path string, opts Options) (*Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	return Parse(path, data, opts)
}

// Parse validates manifest text; file names it in error messages. On
// failure the error is an [Errors] listing every problem found.
func Parse(file string, data []byte, opts Options) (*Manifest, error) {
	d := &decoder{file: file, builtins: opts.Builtins}
	m := d.document(data)
	if len(d.errs) > 0 {
		d.errs.sort()
		return nil, d.errs
	}
	return m, nil
}

// nameRE is the function name syntax: a DNS label, so a name is safe as a
// URL path segment, a NATS subject token, a micro endpoint name and a
// Kubernetes object name.
var nameRE = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether s may name a function: 1 to 63 lowercase
// letters, digits and dashes, starting with a letter and not ending with
// a dash (a DNS label).
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ValidPermission reports whether p can name a permission: 1 to
// MaxPermission letters, digits and . _ : / -, free of the separators used
// on command lines (commas, spaces) and in token claims. The auth
// function's users are granted permissions by the same rule.
func ValidPermission(p string) bool {
	return p != "" && len(p) <= MaxPermission && permissionRE.MatchString(p)
}

// permissionRE keeps permissions free of separators used on command lines
// (commas, spaces) and in token claims.
var permissionRE = regexp.MustCompile(`^[A-Za-z0-9_.:/-]+$`)
