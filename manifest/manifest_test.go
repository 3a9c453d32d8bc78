package manifest_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/manifest"
)

var opts = manifest.Options{Builtins: []string{"ping", "auth", "echo"}}

func TestParseValid(t *testing.T) {
	src := `# a comment
version: 1
functions:
  ping:
    description: Answers pong!
    handler:
      builtin: ping
    public: true
    timeout: 5s
    concurrency: 1000
  auth:
    handler: {builtin: auth}
    permissions: [users:admin, tokens]
`
	m, err := manifest.Parse("fn.yaml", []byte(src), opts)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if m.Version != 1 {
		t.Errorf("Version = %d, want 1", m.Version)
	}
	if got := m.Names(); !slices.Equal(got, []string{"ping", "auth"}) {
		t.Errorf("Names() = %v, want declaration order [ping auth]", got)
	}
	ping, _ := m.Lookup("ping")
	want := manifest.Function{
		Name: "ping", Description: "Answers pong!", Handler: manifest.Handler{Builtin: "ping"},
		Timeout: 5 * time.Second, Concurrency: 1000, Public: true,
		Pos: manifest.Position{File: "fn.yaml", Line: 4, Column: 3},
	}
	if !equalFunction(ping, want) {
		t.Errorf("ping = %+v\nwant %+v", ping, want)
	}
	auth, _ := m.Lookup("auth")
	if auth.Timeout != manifest.DefaultTimeout || auth.Concurrency != manifest.DefaultConcurrency {
		t.Errorf("auth defaults: timeout %v concurrency %d, want %v and %d", auth.Timeout, auth.Concurrency, manifest.DefaultTimeout, manifest.DefaultConcurrency)
	}
	if auth.Public || !slices.Equal(auth.Permissions, []string{"users:admin", "tokens"}) {
		t.Errorf("auth access: public %v permissions %v", auth.Public, auth.Permissions)
	}
	if _, ok := m.Lookup("nope"); ok {
		t.Error("Lookup of an undeclared function succeeded")
	}
}

func TestParseAsync(t *testing.T) {
	src := `version: 1
functions:
  plain: {handler: {builtin: ping}}
  off: {handler: {builtin: ping}, async: {enabled: false}}
  tuned:
    handler: {builtin: ping}
    async:
      max_deliver: 5
      backoff: [0s, 250ms, 1m]
  eager: {handler: {builtin: ping}, async: {backoff: []}}
`
	m, err := manifest.Parse("fn.yaml", []byte(src), opts)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	tests := []struct {
		name     string
		disabled bool
		attempts int
		delays   []time.Duration
		delay    []time.Duration // Delay(1), Delay(2), ...
	}{
		{"plain", false, 3, []time.Duration{time.Minute, 2 * time.Minute}, []time.Duration{time.Minute, 2 * time.Minute, 2 * time.Minute}},
		{"off", true, 3, []time.Duration{time.Minute, 2 * time.Minute}, nil},
		{"tuned", false, 5, []time.Duration{0, 250 * time.Millisecond, time.Minute}, []time.Duration{0, 250 * time.Millisecond, time.Minute, time.Minute}},
		{"eager", false, 3, []time.Duration{}, []time.Duration{0, 0}},
	}
	for _, tt := range tests {
		fn, _ := m.Lookup(tt.name)
		a := fn.Async
		if a.Disabled != tt.disabled || a.Attempts() != tt.attempts || !slices.Equal(a.Delays(), tt.delays) {
			t.Errorf("%s: async = disabled %v, %d attempts, delays %v; want %v, %d, %v", tt.name, a.Disabled, a.Attempts(), a.Delays(), tt.disabled, tt.attempts, tt.delays)
		}
		for i, want := range tt.delay {
			if got := a.Delay(i + 1); got != want {
				t.Errorf("%s: Delay(%d) = %s, want %s", tt.name, i+1, got, want)
			}
		}
	}
}

func equalFunction(a, b manifest.Function) bool {
	return a.Name == b.Name && a.Description == b.Description && a.Handler == b.Handler &&
		a.Timeout == b.Timeout && a.Concurrency == b.Concurrency && a.Public == b.Public &&
		slices.Equal(a.Permissions, b.Permissions) && a.Pos == b.Pos
}

func TestParseAliases(t *testing.T) {
	src := `version: 1
x-defaults: &h {builtin: ping}
functions:
  a: {handler: *h}
`
	// x-defaults is not a known key: anchors must live inside known keys.
	_, err := manifest.Parse("fn.yaml", []byte(src), opts)
	if err == nil || !strings.Contains(err.Error(), "fn.yaml:2:1: x-defaults: unknown key") {
		t.Fatalf("err = %v, want unknown key x-defaults at 2:1", err)
	}
	src = `version: 1
functions:
  a: {handler: &h {builtin: ping}}
  b: {handler: *h, timeout: 2s}
`
	m, err := manifest.Parse("fn.yaml", []byte(src), opts)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if b, _ := m.Lookup("b"); b.Handler.Builtin != "ping" {
		t.Errorf("alias not resolved: b.Handler = %v", b.Handler)
	}
}

// TestParseErrors pins down the message and position of every kind of
// manifest error; each case is a whole file so positions are exact.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // every error, in order, as printed
	}{
		{
			name: "empty file",
			src:  "  \n",
			want: []string{"fn.yaml: the file is empty; expected a mapping with the keys version and functions"},
		},
		{
			name: "syntax error",
			src:  "version: 1\nfunctions:\n  ping: [\n",
			want: []string{"fn.yaml:3: invalid YAML: did not find expected node content"},
		},
		{
			name: "top level is a list",
			src:  "- ping\n",
			want: []string{"fn.yaml:1:1: expected a mapping, got a list"},
		},
		{
			name: "missing keys",
			src:  "version: 1\n",
			want: []string{"fn.yaml:1:1: functions: missing required key"},
		},
		{
			name: "unsupported version",
			src:  "version: 2\nfunctions: {a: {handler: {builtin: ping}}}\n",
			want: []string{"fn.yaml:1:10: version: unsupported schema version 2; this build reads version 1"},
		},
		{
			name: "version as string",
			src:  "version: \"1\"\nfunctions: {a: {handler: {builtin: ping}}}\n",
			want: []string{`fn.yaml:1:10: version: expected an integer, got the string "1"`},
		},
		{
			name: "unknown top-level key with suggestion",
			src:  "version: 1\nfunction:\n  a: {handler: {builtin: ping}}\n",
			want: []string{
				"fn.yaml:1:1: functions: missing required key",
				`fn.yaml:2:1: function: unknown key (did you mean "functions"?); expected one of: version, functions`,
			},
		},
		{
			name: "no functions",
			src:  "version: 1\nfunctions: {}\n",
			want: []string{"fn.yaml:2:12: functions: no functions are declared; declare at least one"},
		},
		{
			name: "functions is null",
			src:  "version: 1\nfunctions:\n",
			want: []string{"fn.yaml:2:11: functions: expected a mapping from function name to definition, got nothing (null)"},
		},
		{
			name: "duplicate function",
			src: `version: 1
functions:
  ping:
    handler: {builtin: ping}
  ping:
    handler: {builtin: ping}
`,
			want: []string{"fn.yaml:5:3: functions.ping: duplicate key; first defined at line 3"},
		},
		{
			name: "invalid function name",
			src:  "version: 1\nfunctions:\n  Ping_1:\n    handler: {builtin: ping}\n",
			want: []string{`fn.yaml:3:3: functions.Ping_1: invalid function name "Ping_1": use 1 to 63 lowercase letters, digits and dashes, starting with a letter and not ending with a dash`},
		},
		{
			name: "unknown function key",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    timeuot: 5s\n",
			want: []string{`fn.yaml:5:5: functions.ping.timeuot: unknown key (did you mean "timeout"?); expected one of: description, handler, timeout, concurrency, public, permissions, async, source, build, env, secrets, workdir, limits`},
		},
		{
			name: "missing handler",
			src:  "version: 1\nfunctions:\n  ping:\n    description: hi\n",
			want: []string{"fn.yaml:4:5: functions.ping.handler: missing required key"},
		},
		{
			name: "handler that does not exist",
			src:  "version: 1\nfunctions:\n  ping:\n    handler:\n      builtin: pnig\n",
			want: []string{`fn.yaml:5:16: functions.ping.handler.builtin: unknown built-in function "pnig"; this build has: auth, echo, ping`},
		},
		{
			name: "handler of unknown kind",
			src:  "version: 1\nfunctions:\n  ping:\n    handler:\n      lambda: arn\n",
			want: []string{
				"fn.yaml:5:7: functions.ping.handler.lambda: unknown key; expected one of: builtin, http, exec",
				"fn.yaml:5:7: functions.ping.handler: set exactly one handler kind, one of: builtin, http, exec",
			},
		},
		{
			name: "handler as a string",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: ping\n",
			want: []string{`fn.yaml:4:14: functions.ping.handler: expected a mapping, got the string "ping"`},
		},
		{
			name: "bare number timeout",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    timeout: 30\n",
			want: []string{"fn.yaml:5:14: functions.ping.timeout: expected a duration with a unit, like 30s or 1m30s; got the bare number 30"},
		},
		{
			name: "bad duration",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    timeout: 5 seconds\n",
			want: []string{`fn.yaml:5:14: functions.ping.timeout: invalid duration "5 seconds"; expected a number with a unit (ms, s, m, h), like 30s or 1m30s`},
		},
		{
			name: "timeout out of range",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    timeout: 2h\n",
			want: []string{"fn.yaml:5:14: functions.ping.timeout: 2h0m0s is out of range; expected more than 0s and at most 15m0s"},
		},
		{
			name: "concurrency wrong type and range",
			src: `version: 1
functions:
  a:
    handler: {builtin: ping}
    concurrency: many
  b:
    handler: {builtin: ping}
    concurrency: 0
`,
			want: []string{
				`fn.yaml:5:18: functions.a.concurrency: expected an integer, got the string "many"`,
				"fn.yaml:8:18: functions.b.concurrency: 0 is out of range; expected 1 to 10000 invocations at once per runner",
			},
		},
		{
			name: "public as yes",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    public: yes\n",
			want: []string{`fn.yaml:5:13: functions.ping.public: expected true or false, got the string "yes"`},
		},
		{
			name: "description as a number",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    description: 42\n",
			want: []string{"fn.yaml:5:18: functions.ping.description: expected a string, got the integer 42 (quote it if it is meant as text)"},
		},
		{
			name: "bad permissions",
			src: `version: 1
functions:
  ping:
    handler: {builtin: ping}
    permissions: [ping, "a b", ping, 7]
`,
			want: []string{
				`fn.yaml:5:25: functions.ping.permissions: invalid permission "a b": use 1 to 128 letters, digits and . _ : / -`,
				`fn.yaml:5:32: functions.ping.permissions: permission "ping" is listed twice`,
				"fn.yaml:5:38: functions.ping.permissions: expected a string, got the integer 7 (quote it if it is meant as text)",
			},
		},
		{
			name: "permissions not a list",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    permissions: ping\n",
			want: []string{`fn.yaml:5:18: functions.ping.permissions: expected a list of permission names, got the string "ping"`},
		},
		{
			name: "public with permissions",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    public: true\n    permissions: [ping]\n",
			want: []string{"fn.yaml:6:18: functions.ping.permissions: a public function cannot require permissions; remove public: true or the permissions"},
		},
		{
			name: "merge key",
			src:  "version: 1\nfunctions:\n  ping:\n    <<: {handler: {builtin: ping}}\n",
			want: []string{
				"fn.yaml:4:5: functions.ping: merge keys (<<) are not supported; write the keys out",
				"fn.yaml:4:5: functions.ping.handler: missing required key",
			},
		},
		{
			name: "async errors",
			src: `version: 1
functions:
  ping:
    handler: {builtin: ping}
    async:
      enabled: "no"
      max_deliver: 0
      backoff: [1s, 5, -1s, 13h]
      retries: 2
`,
			want: []string{
				`fn.yaml:6:16: functions.ping.async.enabled: expected true or false, got the string "no"`,
				"fn.yaml:7:20: functions.ping.async.max_deliver: 0 is out of range; expected 1 to 100 attempts",
				"fn.yaml:8:21: functions.ping.async.backoff: expected a duration with a unit, like 5s or 1m30s; got the bare number 5",
				"fn.yaml:8:24: functions.ping.async.backoff: -1s is out of range; expected 0s to 12h0m0s",
				"fn.yaml:8:29: functions.ping.async.backoff: 13h0m0s is out of range; expected 0s to 12h0m0s",
				`fn.yaml:9:7: functions.ping.async.retries: unknown key; expected one of: enabled, max_deliver, backoff`,
			},
		},
		{
			name: "async backoff not a list",
			src:  "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n    async: {backoff: 1s}\n",
			want: []string{`fn.yaml:5:22: functions.ping.async.backoff: expected a list of durations, like [10s, 1m], got the string "1s"`},
		},
		{
			name: "second document",
			src:  "version: 1\nfunctions: {a: {handler: {builtin: ping}}}\n---\nversion: 1\n",
			want: []string{"fn.yaml:3:1: a manifest is a single YAML document; remove the second one (after ---)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := manifest.Parse("fn.yaml", []byte(tt.src), opts)
			if err == nil {
				t.Fatalf("Parse succeeded, want errors:\n%s", strings.Join(tt.want, "\n"))
			}
			var errs manifest.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T is not manifest.Errors: %v", err, err)
			}
			got := make([]string, len(errs))
			for i, e := range errs {
				got[i] = e.Error()
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fn.yaml")
	if err := os.WriteFile(path, []byte("version: 1\nfunctions:\n  ping: {handler: {builtin: ping}, timeout: nope}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := manifest.Load(path, opts)
	if err == nil || !strings.HasPrefix(err.Error(), path+":3:") {
		t.Errorf("Load error = %v, want it to start with %s:3:", err, path)
	}
	if _, err := manifest.Load(filepath.Join(dir, "missing.yaml"), opts); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: err = %v, want os.ErrNotExist", err)
	}
}

// TestRepositoryManifest keeps the repo's own fn.yaml valid and declaring
// the functions the platform ships with.
func TestRepositoryManifest(t *testing.T) {
	m, err := manifest.Load("../fn.yaml", opts)
	if err != nil {
		t.Fatalf("repository fn.yaml: %v", err)
	}
	for _, name := range []string{"ping", "auth"} {
		if _, ok := m.Lookup(name); !ok {
			t.Errorf("fn.yaml does not declare %s", name)
		}
	}
}

// TestDocumentedExamples keeps the fn.yaml examples in the docs valid.
func TestDocumentedExamples(t *testing.T) {
	yamlBlock := regexp.MustCompile("(?s)```yaml\n(.*?)```")
	for _, doc := range []string{"../README.md", "../docs/fn-yaml.md"} {
		text, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		blocks := yamlBlock.FindAllSubmatch(text, -1)
		if len(blocks) == 0 {
			t.Errorf("%s has no yaml example", doc)
		}
		for i, b := range blocks {
			// Named as if beside the repository's fn.yaml: sources are
			// written relative to the repository's root.
			name := filepath.Join("..", fmt.Sprintf("%s example %d", filepath.Base(doc), i+1))
			if _, err := manifest.Parse(name, b[1], opts); err != nil {
				t.Errorf("%v", err)
			}
		}
	}
}
