package manifest_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/manifest"
)

// processDir makes a directory holding a manifest and a source directory
// "app" beside it, and returns the manifest's path.
func processDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "fn.yaml")
}

func TestParseProcessHandlers(t *testing.T) {
	file := processDir(t)
	src := `version: 1
functions:
  web:
    source: app
    build: [npm, ci, --omit=dev]
    handler:
      http:
        command: [node, index.js]
        listen: unix
        readiness: /ping
        processes: per-slot
        start_timeout: 1m
    env: {GREETING: hello, lower_ok: "1"}
    secrets: {DB_PASSWORD: db-password}
    workdir: ./srv/../srv
    limits: {memory: 256Mi, cpu: 0.5, open_files: 1024}
    public: true
  script:
    source: ./app
    handler:
      exec: {command: [bash, handler.sh]}
    limits: {memory: 67108864}
`
	m, err := manifest.Parse(file, []byte(src), opts)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	web, _ := m.Lookup("web")
	app := filepath.Join(filepath.Dir(file), "app")
	h := web.Handler.HTTP
	switch {
	case h == nil:
		t.Fatalf("web handler = %v, want http", web.Handler)
	case !slices.Equal(h.Command, []string{"node", "index.js"}) || h.Listen != manifest.ListenUnix || h.Readiness != "/ping" || !h.PerSlot || h.StartTimeout != time.Minute:
		t.Errorf("web http handler = %+v", *h)
	}
	p := web.Process
	if p.Source != app || !slices.Equal(p.Build, []string{"npm", "ci", "--omit=dev"}) || p.Workdir != "srv" {
		t.Errorf("web source %q build %v workdir %q", p.Source, p.Build, p.Workdir)
	}
	if p.Env["GREETING"] != "hello" || p.Env["lower_ok"] != "1" || len(p.Env) != 2 || p.Secrets["DB_PASSWORD"] != "db-password" || len(p.Secrets) != 1 {
		t.Errorf("web env %v secrets %v", p.Env, p.Secrets)
	}
	if p.Limits != (manifest.Limits{Memory: 256 << 20, CPU: 0.5, OpenFiles: 1024}) {
		t.Errorf("web limits = %+v", p.Limits)
	}
	if got := web.Handler.String(); got != "http:node index.js" {
		t.Errorf("web handler String() = %q", got)
	}
	script, _ := m.Lookup("script")
	if script.Handler.Exec == nil || !slices.Equal(script.Handler.Command(), []string{"bash", "handler.sh"}) || script.Handler.Kind() != "exec" {
		t.Errorf("script handler = %+v", script.Handler)
	}
	if script.Process.Source != app || script.Process.Limits.Memory != 64<<20 {
		t.Errorf("script source %q limits %+v", script.Process.Source, script.Process.Limits)
	}
	// An http handler's defaults.
	m, err = manifest.Parse(file, []byte("version: 1\nfunctions:\n  d:\n    source: app\n    handler: {http: {command: [./server]}}\n"), opts)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := m.Lookup("d")
	if h := d.Handler.HTTP; h.Listen != manifest.ListenPort || h.PerSlot || h.Readiness != "" || h.StartTimeout != manifest.DefaultStartTimeout {
		t.Errorf("http defaults = %+v", *h)
	}
}

func TestParseProcessErrors(t *testing.T) {
	file := processDir(t)
	head := "version: 1\nfunctions:\n  f:\n"
	tests := []struct {
		name string
		body string
		want []string // substrings of the one error each line yields, in order
	}{
		{"no source", "    handler: {exec: {command: [cat]}}\n",
			[]string{"functions.f.source: missing required key: an exec handler runs the code in a source directory"}},
		{"source missing", "    source: nope\n    handler: {exec: {command: [cat]}}\n",
			[]string{"nope cannot be read: no such file or directory"}},
		{"source a file", "    source: file\n    handler: {exec: {command: [cat]}}\n",
			[]string{"is not a directory"}},
		{"empty command", "    source: app\n    handler: {exec: {command: []}}\n",
			[]string{"functions.f.handler.exec.command: the command is empty"}},
		{"command a string", "    source: app\n    handler: {http: {command: node index.js}}\n",
			[]string{`functions.f.handler.http.command: expected a list: the program and its arguments, like [node, index.js], got the string "node index.js"`}},
		{"command missing", "    source: app\n    handler: {http: {listen: port}}\n",
			[]string{"functions.f.handler.http.command: missing required key"}},
		{"bad listen", "    source: app\n    handler: {http: {command: [a], listen: tcp}}\n",
			[]string{`functions.f.handler.http.listen: unknown "tcp"; expected port`}},
		{"bad processes", "    source: app\n    handler: {http: {command: [a], processes: many}}\n",
			[]string{`functions.f.handler.http.processes: unknown "many"`}},
		{"bad readiness", "    source: app\n    handler: {http: {command: [a], readiness: healthz}}\n",
			[]string{`functions.f.handler.http.readiness: "healthz" is not a URL path`}},
		{"two kinds", "    source: app\n    handler: {http: {command: [a]}, exec: {command: [b]}}\n",
			[]string{"functions.f.handler: set exactly one handler kind, one of: builtin, http, exec"}},
		{"reserved env", "    source: app\n    handler: {exec: {command: [a]}}\n    env: {PORT: \"1\", SHOAL_X: y, 9A: z}\n",
			[]string{`"PORT" is set by Shoal`, `"SHOAL_X" is set by Shoal`, `invalid environment variable name "9A"`}},
		{"env value a number", "    source: app\n    handler: {exec: {command: [a]}}\n    env: {N: 3}\n",
			[]string{"functions.f.env.N: expected a string, got the integer 3 (quote it"}},
		{"bad secret name", "    source: app\n    handler: {exec: {command: [a]}}\n    secrets: {DB: \"Not Valid\"}\n",
			[]string{`invalid secret name "Not Valid"`}},
		{"env and secret", "    source: app\n    handler: {exec: {command: [a]}}\n    env: {DB: x}\n    secrets: {DB: db}\n",
			[]string{"functions.f.secrets: DB is set in both env and secrets"}},
		{"workdir escapes", "    source: app\n    handler: {exec: {command: [a]}}\n    workdir: ../etc\n",
			[]string{`workdir "../etc" must be a relative path inside the source directory`}},
		{"workdir absolute", "    source: app\n    handler: {exec: {command: [a]}}\n    workdir: /etc\n",
			[]string{`workdir "/etc" must be a relative path`}},
		{"bad limits", "    source: app\n    handler: {exec: {command: [a]}}\n    limits: {memory: 12 parsecs, cpu: -1, open_files: 3, disk: 1}\n",
			[]string{"functions.f.limits.disk: unknown key", `invalid memory size "12 parsecs"`, "cpu: -1 is out of range", "open_files: 3 is out of range"}},
		{"memory too small", "    source: app\n    handler: {exec: {command: [a]}}\n    limits: {memory: 1Mi}\n",
			[]string{"1Mi is below the minimum of 4Mi"}},
		{"built-in with process fields", "    handler: {builtin: ping}\n    source: app\n    env: {A: b}\n",
			[]string{"functions.f.env: only http and exec handlers take env", "functions.f.source: only http and exec handlers take source"}},
		{"bad start timeout", "    source: app\n    handler: {http: {command: [a], start_timeout: 0s}}\n",
			[]string{"start_timeout: 0s is out of range"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := manifest.Parse(file, []byte(head+tt.body), opts)
			var errs manifest.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error = %v, want manifest.Errors", err)
			}
			all := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("errors:\n%s\ndo not say %q", all, w)
				}
			}
			if len(errs) < len(tt.want) {
				t.Errorf("%d errors, want %d:\n%s", len(errs), len(tt.want), all)
			}
		})
	}
}

func processFunction() manifest.Function {
	return manifest.Function{
		Name: "web", Timeout: 10 * time.Second, Concurrency: 4, Public: true,
		Handler: manifest.Handler{HTTP: &manifest.HTTPHandler{Command: []string{"node", "index.js"}, Listen: manifest.ListenUnix,
			Readiness: "/ping", PerSlot: true, StartTimeout: time.Minute}},
		Process: manifest.Process{
			Source: "/somewhere", Build: []string{"npm", "ci"},
			Code:    manifest.CodeRef{Digest: "sha256:" + strings.Repeat("ab", 32), Size: 1234},
			Env:     map[string]string{"A": "b"},
			Secrets: map[string]string{"DB": "db-password"},
			Workdir: "srv",
			Limits:  manifest.Limits{Memory: 64 << 20, CPU: 1.5, OpenFiles: 100},
		},
	}
}

func TestProcessSpecRoundTrip(t *testing.T) {
	for _, fn := range []manifest.Function{processFunction(), {
		Name: "sh", Timeout: time.Second, Concurrency: 1,
		Handler: manifest.Handler{Exec: &manifest.ExecHandler{Command: []string{"bash", "x.sh"}}},
		Process: manifest.Process{Code: manifest.CodeRef{Digest: "sha256:" + strings.Repeat("0", 64), Size: 1}},
	}} {
		b, err := manifest.MarshalSpec(fn)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "somewhere") || strings.Contains(string(b), "npm") {
			t.Errorf("spec %s carries the deploy-time source or build", b)
		}
		got, err := manifest.UnmarshalSpec(b)
		if err != nil {
			t.Fatalf("UnmarshalSpec(%s): %v", b, err)
		}
		if !manifest.SameDefinition(got, fn) {
			t.Errorf("round trip of %s:\n got %+v\nwant %+v", b, got, fn)
		}
		if got.Process.Source != "" || got.Process.Build != nil {
			t.Errorf("decoded spec has source %q build %v", got.Process.Source, got.Process.Build)
		}
	}
}

func TestProcessSameDefinition(t *testing.T) {
	base := processFunction()
	changes := map[string]func(f *manifest.Function){
		"digest":  func(f *manifest.Function) { f.Process.Code.Digest = "sha256:" + strings.Repeat("cd", 32) },
		"env":     func(f *manifest.Function) { f.Process.Env = map[string]string{"A": "c"} },
		"secret":  func(f *manifest.Function) { f.Process.Secrets = nil },
		"workdir": func(f *manifest.Function) { f.Process.Workdir = "" },
		"memory":  func(f *manifest.Function) { f.Process.Limits.Memory = 128 << 20 },
		"command": func(f *manifest.Function) { f.Handler.HTTP = &manifest.HTTPHandler{Command: []string{"node", "x.js"}} },
		"exec": func(f *manifest.Function) {
			f.Handler = manifest.Handler{Exec: &manifest.ExecHandler{Command: []string{"node"}}}
		},
		"per-slot":   func(f *manifest.Function) { h := *f.Handler.HTTP; h.PerSlot = false; f.Handler.HTTP = &h },
		"readiness":  func(f *manifest.Function) { h := *f.Handler.HTTP; h.Readiness = ""; f.Handler.HTTP = &h },
		"start time": func(f *manifest.Function) { h := *f.Handler.HTTP; h.StartTimeout = time.Second; f.Handler.HTTP = &h },
	}
	for name, change := range changes {
		f := processFunction()
		change(&f)
		if manifest.SameDefinition(base, f) {
			t.Errorf("a change of %s is not seen", name)
		}
	}
	f := processFunction()
	f.Process.Source, f.Process.Build = "/elsewhere", nil
	if !manifest.SameDefinition(base, f) {
		t.Error("source and build, deploy-time settings, change the definition")
	}
}

func TestProcessSpecRefuses(t *testing.T) {
	good := `"handler":{"exec":{"command":["cat"]}},"timeout":"1s","concurrency":1,"public":true`
	code := `,"code":{"digest":"sha256:` + strings.Repeat("a", 64) + `","size":3}`
	tests := map[string]struct{ spec, want string }{
		"no code":        {`{"name":"f",` + good + `}`, "no code"},
		"bad digest":     {`{"name":"f",` + good + `,"code":{"digest":"md5:x","size":3}}`, "invalid code digest"},
		"empty command":  {`{"name":"f","handler":{"exec":{"command":[]}},"timeout":"1s","concurrency":1` + code + `}`, "the command is empty"},
		"reserved env":   {`{"name":"f",` + good + code + `,"env":{"PORT":"1"}}`, `"PORT" is set by Shoal`},
		"bad secret":     {`{"name":"f",` + good + code + `,"secrets":{"A":"B C"}}`, "invalid secret name"},
		"escape workdir": {`{"name":"f",` + good + code + `,"workdir":"../x"}`, "must be a relative path"},
		"bad limits":     {`{"name":"f",` + good + code + `,"limits":{"memory":10}}`, "below the minimum"},
		"builtin + code": {`{"name":"f","handler":{"builtin":"ping"},"timeout":"1s","concurrency":1` + code + `}`, "a built-in takes no code"},
		"bad listen":     {`{"name":"f","handler":{"http":{"command":["a"],"listen":"x","processes":"shared","start_timeout":"1s"}},"timeout":"1s","concurrency":1` + code + `}`, `invalid http listen "x"`},
		"bad processes":  {`{"name":"f","handler":{"http":{"command":["a"],"listen":"port","processes":"x","start_timeout":"1s"}},"timeout":"1s","concurrency":1` + code + `}`, `invalid http processes "x"`},
	}
	for name, tt := range tests {
		_, err := manifest.UnmarshalSpec([]byte(tt.spec))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: UnmarshalSpec error = %v, want one saying %q", name, err, tt.want)
		}
	}
}

func TestParseMemory(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{{"1024", 1024}, {"64Mi", 64 << 20}, {"2Gi", 2 << 30}, {"1k", 1000}, {"5M", 5e6}, {"1Ti", 1 << 40}}
	for _, tt := range tests {
		got, err := manifest.ParseMemory(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "Mi", "-1Mi", "0", "1.5Gi", "1mi", "99999999999Ti"} {
		if _, err := manifest.ParseMemory(bad); err == nil {
			t.Errorf("ParseMemory(%q) succeeded", bad)
		}
	}
	if got := manifest.FormatMemory(256 << 20); got != "256Mi" {
		t.Errorf("FormatMemory = %q", got)
	}
}
