package manifest_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/manifest"
)

// fullFunction sets every field a definition has, and a position.
func fullFunction() manifest.Function {
	return manifest.Function{
		Name:        "auth",
		Description: "Checks a token",
		Handler:     manifest.Handler{Builtin: "auth"},
		Timeout:     1500 * time.Millisecond,
		Concurrency: 7,
		Permissions: []string{"fn:auth", "Admin_2.x/y-z"},
		Pos:         manifest.Position{File: "fn.yaml", Line: 3, Column: 3},
	}
}

// sameFields compares two functions field by field, leaving out Pos.
func sameFields(t *testing.T, got, want manifest.Function) {
	t.Helper()
	if got.Name != want.Name {
		t.Errorf("Name = %q, want %q", got.Name, want.Name)
	}
	if got.Description != want.Description {
		t.Errorf("Description = %q, want %q", got.Description, want.Description)
	}
	if got.Handler != want.Handler {
		t.Errorf("Handler = %v, want %v", got.Handler, want.Handler)
	}
	if got.Timeout != want.Timeout {
		t.Errorf("Timeout = %s, want %s", got.Timeout, want.Timeout)
	}
	if got.Concurrency != want.Concurrency {
		t.Errorf("Concurrency = %d, want %d", got.Concurrency, want.Concurrency)
	}
	if got.Public != want.Public {
		t.Errorf("Public = %v, want %v", got.Public, want.Public)
	}
	if strings.Join(got.Permissions, "|") != strings.Join(want.Permissions, "|") || len(got.Permissions) != len(want.Permissions) {
		t.Errorf("Permissions = %q, want %q", got.Permissions, want.Permissions)
	}
	if got.Async.Disabled != want.Async.Disabled || got.Async.Attempts() != want.Async.Attempts() || fmt.Sprint(got.Async.Delays()) != fmt.Sprint(want.Async.Delays()) {
		t.Errorf("Async = %+v, want %+v", got.Async, want.Async)
	}
	if got.Pos != (manifest.Position{}) {
		t.Errorf("Pos = %v: a stored definition says nothing of where it was declared", got.Pos)
	}
}

func TestSpecRoundTrip(t *testing.T) {
	parsed, err := manifest.Parse("fn.yaml", []byte(`version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
`), manifest.Options{Builtins: []string{"ping"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		fn   manifest.Function
	}{
		{"every field set", fullFunction()},
		{"parsed from fn.yaml with defaults", parsed.Functions[0]},
		{"bounds", manifest.Function{
			Name:        "a" + strings.Repeat("b", 61) + "c",
			Description: strings.Repeat("d", 1024),
			Handler:     manifest.Handler{Builtin: "x"},
			Timeout:     manifest.MaxTimeout,
			Concurrency: manifest.MaxConcurrency,
			Permissions: []string{strings.Repeat("p", 128)},
		}},
		{"smallest", manifest.Function{Name: "a", Handler: manifest.Handler{Builtin: "a"}, Timeout: time.Nanosecond, Concurrency: 1}},
		{"async disabled", manifest.Function{Name: "a", Handler: manifest.Handler{Builtin: "a"}, Timeout: time.Second, Concurrency: 1, Async: manifest.Async{Disabled: true}}},
		{"async retried at once", manifest.Function{Name: "a", Handler: manifest.Handler{Builtin: "a"}, Timeout: time.Second, Concurrency: 1, Async: manifest.Async{MaxDeliver: 100, Backoff: []time.Duration{}}}},
		{"async backoff", manifest.Function{Name: "a", Handler: manifest.Handler{Builtin: "a"}, Timeout: time.Second, Concurrency: 1, Async: manifest.Async{MaxDeliver: 1, Backoff: []time.Duration{0, time.Millisecond, manifest.MaxBackoff}}}},
		{"odd duration", manifest.Function{Name: "slow", Handler: manifest.Handler{Builtin: "sleep"}, Timeout: 90*time.Second + 250*time.Microsecond, Concurrency: 3, Public: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := manifest.MarshalSpec(tt.fn)
			if err != nil {
				t.Fatal(err)
			}
			got, err := manifest.UnmarshalSpec(data)
			if err != nil {
				t.Fatalf("UnmarshalSpec(%s): %v", data, err)
			}
			if !manifest.SameDefinition(got, tt.fn) {
				t.Errorf("SameDefinition after a round trip through %s: false", data)
			}
			sameFields(t, got, tt.fn)
		})
	}
}

// The catalog stores this JSON; other tools read it.
func TestMarshalSpecFormat(t *testing.T) {
	tests := []struct {
		name string
		fn   manifest.Function
		want string
	}{
		{"every field", fullFunction(),
			`{"name":"auth","description":"Checks a token","handler":{"builtin":"auth"},"timeout":"1.5s","concurrency":7,"public":false,"permissions":["fn:auth","Admin_2.x/y-z"]}`},
		{"empty description and permissions left out", manifest.Function{Name: "ping", Handler: manifest.Handler{Builtin: "ping"}, Timeout: 30 * time.Second, Concurrency: 100, Public: true, Permissions: []string{}},
			`{"name":"ping","handler":{"builtin":"ping"},"timeout":"30s","concurrency":100,"public":true}`},
		{"default async written out as the default: left out", manifest.Function{Name: "ping", Handler: manifest.Handler{Builtin: "ping"}, Timeout: 30 * time.Second, Concurrency: 100, Public: true,
			Async: manifest.Async{MaxDeliver: manifest.DefaultMaxDeliver, Backoff: manifest.DefaultBackoff()}},
			`{"name":"ping","handler":{"builtin":"ping"},"timeout":"30s","concurrency":100,"public":true}`},
		{"async in full when not the default", manifest.Function{Name: "ping", Handler: manifest.Handler{Builtin: "ping"}, Timeout: 30 * time.Second, Concurrency: 100, Public: true,
			Async: manifest.Async{MaxDeliver: 5}},
			`{"name":"ping","handler":{"builtin":"ping"},"timeout":"30s","concurrency":100,"public":true,"async":{"enabled":true,"max_deliver":5,"backoff":["1m0s","2m0s"]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := manifest.MarshalSpec(tt.fn)
			if err != nil {
				t.Fatal(err)
			}
			if string(data) != tt.want {
				t.Errorf("MarshalSpec =\n%s\nwant\n%s", data, tt.want)
			}
		})
	}
}

// The returned function owns its permissions: changing the Spec's slice
// afterwards changes nothing.
func TestSpecFunctionCopiesPermissions(t *testing.T) {
	s := fullFunction().Spec()
	fn, err := s.Function()
	if err != nil {
		t.Fatal(err)
	}
	s.Permissions[0] = "changed"
	if fn.Permissions[0] != "fn:auth" {
		t.Errorf("Permissions[0] = %q after the Spec changed, want fn:auth", fn.Permissions[0])
	}
}

func TestUnmarshalSpecRefuses(t *testing.T) {
	// def is a valid definition with changes, each `key: raw JSON`: a
	// change replaces the field or adds it; an empty value leaves it out.
	def := func(changes ...string) string {
		keys := []string{"name", "handler", "timeout", "concurrency", "public"}
		values := map[string]string{"name": `"ping"`, "handler": `{"builtin":"ping"}`, "timeout": `"30s"`, "concurrency": "100", "public": "false"}
		for _, c := range changes {
			k, v, _ := strings.Cut(c, ": ")
			if _, ok := values[k]; !ok {
				keys = append(keys, k)
			}
			values[k] = v
		}
		var fields []string
		for _, k := range keys {
			if values[k] != "" {
				fields = append(fields, `"`+k+`":`+values[k])
			}
		}
		return "{" + strings.Join(fields, ",") + "}"
	}
	if _, err := manifest.UnmarshalSpec([]byte(def())); err != nil {
		t.Fatalf("the base definition %s: %v", def(), err)
	}
	long := strings.Repeat("x", 1025)
	tests := []struct {
		name string
		data string
		want []string // each in the error
	}{
		{"upper-case name", def(`name: "Ping"`), []string{`function "Ping"`, `invalid function name "Ping"`}},
		{"empty name", def(`name: ""`), []string{`invalid function name ""`}},
		{"no name", def(`name: `), []string{`invalid function name ""`}},
		{"name ending in a hyphen", def(`name: "ping-"`), []string{`invalid function name "ping-"`}},
		{"name with a dot (a NATS token separator)", def(`name: "a.b"`), []string{`invalid function name "a.b"`}},
		{"name of 64 characters", def(`name: "` + strings.Repeat("a", 64) + `"`), []string{"invalid function name"}},
		{"empty handler", def(`handler: {}`), []string{"no handler"}},
		{"no handler", def(`handler: `), []string{"no handler"}},
		{"empty built-in", def(`handler: {"builtin":""}`), []string{"no handler"}},
		{"timeout without a unit", def(`timeout: "5"`), []string{`invalid timeout "5"`}},
		{"timeout of words", def(`timeout: "soon"`), []string{`invalid timeout "soon"`}},
		{"no timeout", def(`timeout: `), []string{`invalid timeout ""`}},
		{"zero timeout", def(`timeout: "0s"`), []string{"timeout 0s out of range"}},
		{"negative timeout", def(`timeout: "-1s"`), []string{"timeout -1s out of range"}},
		{"timeout too long", def(`timeout: "15m0.001s"`), []string{"timeout 15m0.001s out of range (0s, 15m0s]"}},
		{"timeout as a number", def(`timeout: 30`), []string{"decode function definition", "timeout"}},
		{"concurrency 0", def(`concurrency: 0`), []string{"concurrency 0 out of range [1, 10000]"}},
		{"no concurrency", def(`concurrency: `), []string{"concurrency 0 out of range"}},
		{"negative concurrency", def(`concurrency: -1`), []string{"concurrency -1 out of range"}},
		{"concurrency above the maximum", def(`concurrency: 10001`), []string{"concurrency 10001 out of range [1, 10000]"}},
		{"concurrency as a string", def(`concurrency: "5"`), []string{"decode function definition", "concurrency"}},
		{"permission with a space", def(`permissions: ["a b"]`), []string{`invalid permission "a b"`}},
		{"permission with a comma", def(`permissions: ["a,b"]`), []string{`invalid permission "a,b"`}},
		{"empty permission", def(`permissions: [""]`), []string{`invalid permission ""`}},
		{"permission too long", def(`permissions: ["` + strings.Repeat("p", 129) + `"]`), []string{"invalid permission"}},
		{"duplicate permission", def(`permissions: ["a","b","a"]`), []string{`permission "a" listed twice`}},
		{"public with permissions", def(`public: true`, `permissions: ["a"]`), []string{"a public function cannot require permissions"}},
		{"description too long", def(`description: "` + long + `"`), []string{"description too long (1025 bytes)"}},
		{"async max_deliver 0", def(`async: {"enabled":true,"max_deliver":0,"backoff":[]}`), []string{"async max_deliver 0 out of range [1, 100]"}},
		{"async max_deliver above the maximum", def(`async: {"enabled":true,"max_deliver":101,"backoff":[]}`), []string{"async max_deliver 101 out of range"}},
		{"async backoff without a unit", def(`async: {"enabled":true,"max_deliver":3,"backoff":["5"]}`), []string{`invalid async backoff delay "5"`}},
		{"async backoff negative", def(`async: {"enabled":true,"max_deliver":3,"backoff":["-1s"]}`), []string{`invalid async backoff delay "-1s"`}},
		{"async backoff too long", def(`async: {"enabled":true,"max_deliver":3,"backoff":["12h0m1s"]}`), []string{`invalid async backoff delay "12h0m1s"`}},
		{"async unknown field", def(`async: {"enabled":true,"max_deliver":3,"backoff":[],"dlq":"x"}`), []string{`unknown field "dlq"`}},
		{"unknown field", def(`memory: "128Mi"`), []string{`unknown field "memory"`}},
		{"unknown handler kind", def(`handler: {"image":"x"}`), []string{`unknown field "image"`}},
		{"trailing object", def() + ` {}`, []string{"trailing data after the JSON object"}},
		{"trailing word", def() + ` x`, []string{"trailing data after the JSON object"}},
		// dec.More reports false before a closing bracket, so UnmarshalSpec
		// (spec.go) lets these through: a real bug, see the report.
		{"trailing closing brace", def() + `}`, []string{"trailing data after the JSON object"}},
		{"trailing closing bracket and garbage", def() + `]garbage`, []string{"trailing data after the JSON object"}},
		{"not JSON", `name: ping`, []string{"decode function definition"}},
		{"empty", ``, []string{"decode function definition"}},
		{"an array", `[]`, []string{"decode function definition"}},
		{"truncated", def()[:20], []string{"decode function definition"}},
		{"every problem at once", `{"name":"X","handler":{},"timeout":"0s","concurrency":0,"public":true,"permissions":["a","a"]}`, []string{
			`invalid function name "X"`, "no handler", "timeout 0s out of range", "concurrency 0 out of range",
			`permission "a" listed twice`, "a public function cannot require permissions",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fn, err := manifest.UnmarshalSpec([]byte(tt.data))
			if err == nil {
				t.Fatalf("UnmarshalSpec(%.200s) = %+v, want an error", tt.data, fn)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestSameDefinition(t *testing.T) {
	base := fullFunction()
	if !manifest.SameDefinition(base, fullFunction()) {
		t.Fatal("a function is not defined like an equal one")
	}
	tests := []struct {
		name   string
		change func(*manifest.Function)
		same   bool
	}{
		{"another position", func(f *manifest.Function) { f.Pos = manifest.Position{File: "other.yaml", Line: 9} }, true},
		{"no position", func(f *manifest.Function) { f.Pos = manifest.Position{} }, true},
		{"permissions in a new slice", func(f *manifest.Function) { f.Permissions = append([]string(nil), f.Permissions...) }, true},
		{"name", func(f *manifest.Function) { f.Name = "auth2" }, false},
		{"description", func(f *manifest.Function) { f.Description += "." }, false},
		{"handler", func(f *manifest.Function) { f.Handler.Builtin = "echo" }, false},
		{"timeout", func(f *manifest.Function) { f.Timeout += time.Nanosecond }, false},
		{"concurrency", func(f *manifest.Function) { f.Concurrency++ }, false},
		{"public", func(f *manifest.Function) { f.Public = true }, false},
		{"a permission more", func(f *manifest.Function) { f.Permissions = append(f.Permissions, "more") }, false},
		{"a permission less", func(f *manifest.Function) { f.Permissions = f.Permissions[:1] }, false},
		{"no permissions", func(f *manifest.Function) { f.Permissions = nil }, false},
		{"a permission changed", func(f *manifest.Function) { f.Permissions = []string{"fn:auth", "admin"} }, false},
		// Order is kept through the catalog, so it counts.
		{"permissions reordered", func(f *manifest.Function) { f.Permissions = []string{f.Permissions[1], f.Permissions[0]} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fullFunction()
			tt.change(&f)
			if got := manifest.SameDefinition(base, f); got != tt.same {
				t.Errorf("SameDefinition(base, changed) = %v, want %v", got, tt.same)
			}
			if got := manifest.SameDefinition(f, base); got != tt.same {
				t.Errorf("SameDefinition(changed, base) = %v, want %v", got, tt.same)
			}
		})
	}

	t.Run("nil and empty permissions", func(t *testing.T) {
		a := manifest.Function{Name: "ping", Handler: manifest.Handler{Builtin: "ping"}, Timeout: time.Second, Concurrency: 1, Public: true}
		b := a
		b.Permissions = []string{}
		if !manifest.SameDefinition(a, b) || !manifest.SameDefinition(b, a) {
			t.Error("nil and empty permissions differ")
		}
		// What the catalog does: store b, read it back, compare with b.
		data, err := manifest.MarshalSpec(b)
		if err != nil {
			t.Fatal(err)
		}
		back, err := manifest.UnmarshalSpec(data)
		if err != nil {
			t.Fatal(err)
		}
		if !manifest.SameDefinition(back, b) {
			t.Errorf("empty permissions read back from %s differ", data)
		}
	})
}
