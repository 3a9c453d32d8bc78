package main

import (
	"go/format"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/internal/proctest"
	"github.com/shoal-dev/shoal/manifest"
	"go.yaml.in/yaml/v3"
)

// TestNewRunsEachLanguage scaffolds a function in each language and runs
// it the way its fn.yaml entry says (build, then command), outside Shoal:
// an http function must answer GET / on the PORT it is given, an exec one
// must answer on stdout from the request in its environment and stdin.
func TestNewRunsEachLanguage(t *testing.T) {
	for _, tc := range []struct {
		lang string
		tool string // skip when not installed; "" for always there
		want string // in the answer
	}{
		{lang: "bash", want: "Hello from fn1! (POST /x) Received 5 characters.\n"},
		{lang: "go", want: "Hello from fn1! (GET /)\n"},
		{lang: "python", tool: "python3", want: "Hello from fn1! (GET /)\n"},
		{lang: "node", tool: "node", want: "Hello from fn1! (GET /)\n"},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			if tc.tool != "" {
				proctest.NeedTool(t, tc.tool)
			}
			root := t.TempDir()
			out, errOut, code := runShoal(t, root, "new", "fn1", "--lang", tc.lang)
			if code != 0 {
				t.Fatalf("shoal new: exit %d\n%s%s", code, out, errOut)
			}
			dir := filepath.Join(root, "fn1")
			if tc.lang == "go" {
				checkGofmt(t, filepath.Join(dir, "main.go"))
			}
			fn := entryOf(t, filepath.Join(root, "fn.yaml"), "fn1")
			if fn.Source != "fn1" {
				t.Errorf("source %q, want fn1", fn.Source)
			}
			if len(fn.Build) > 0 {
				if _, stderr, code := proctest.Run(dir, nil, "", fn.Build...); code != 0 {
					t.Fatalf("build %s: exit %d\n%s", strings.Join(fn.Build, " "), code, stderr)
				}
			}
			switch {
			case fn.Handler.Exec != nil:
				got, stderr, code := proctest.Run(dir, []string{"SHOAL_METHOD=POST", "SHOAL_PATH=/x", "SHOAL_QUERY=", "SHOAL_FUNCTION=fn1"}, "hello", fn.Handler.Exec.Command...)
				if code != 0 || got != tc.want {
					t.Errorf("answer: exit %d, %q, stderr %q; want exit 0, %q", code, got, stderr, tc.want)
				}
			case fn.Handler.HTTP != nil:
				port := proctest.FreePort(t)
				p := proctest.Start(t, dir, []string{"PORT=" + port}, fn.Handler.HTTP.Command...)
				client := &http.Client{Timeout: 5 * time.Second}
				status, body := proctest.WaitGet(t, p, client, "http://127.0.0.1:"+port+fn.Handler.HTTP.Readiness, nil)
				if status != http.StatusOK || body != tc.want {
					t.Errorf("GET %s: %d %q, want 200 %q", fn.Handler.HTTP.Readiness, status, body, tc.want)
				}
			default:
				t.Fatalf("entry has no handler: %+v", fn)
			}
		})
	}
}

// TestNewRefuses: what shoal new turns away, before it writes anything.
func TestNewRefuses(t *testing.T) {
	const existing = "version: 1\nfunctions:\n  taken:\n    handler: {builtin: ping}\n"
	for _, tc := range []struct {
		name     string
		args     []string
		manifest string // fn.yaml's text, if any
		setup    func(t *testing.T, root string)
		want     string // in stderr
	}{
		{name: "upper-case name", args: []string{"Hello", "--lang", "go"}, want: `invalid function name "Hello"`},
		{name: "underscore in name", args: []string{"a_b", "--lang", "go"}, want: `invalid function name "a_b"`},
		{name: "name ending with a dash", args: []string{"a-", "--lang", "go"}, want: `invalid function name "a-"`},
		{name: "name starting with a digit", args: []string{"1a", "--lang", "go"}, want: `invalid function name "1a"`},
		{name: "name of 64 characters", args: []string{strings.Repeat("a", 64), "--lang", "go"}, want: "invalid function name"},
		{name: "unknown language", args: []string{"fn1", "--lang", "rust"}, want: `--lang "rust": want one of bash, go, node, python`},
		{name: "no language", args: []string{"fn1"}, want: `required flag(s) "lang" not set`},
		{name: "no name", args: []string{"--lang", "go"}, want: "accepts 1 arg(s), received 0"},
		{
			name: "directory not empty", args: []string{"fn1", "--lang", "go"},
			setup: func(t *testing.T, root string) {
				if err := os.Mkdir(filepath.Join(root, "fn1"), 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(root, "fn1"), "keep.txt", "mine")
			},
			want: "fn1 already exists and is not empty",
		},
		{
			name: "directory is a file", args: []string{"fn1", "--lang", "go", "--dir", "file"},
			setup: func(t *testing.T, root string) { writeFile(t, root, "file", "mine") },
			want:  "file exists and is not a directory",
		},
		{name: "name already in fn.yaml", args: []string{"taken", "--lang", "bash"}, manifest: existing, want: "fn.yaml:3:3: the function taken is already declared"},
		{name: "name already in a flow mapping", args: []string{"taken", "--lang", "bash"}, manifest: "version: 1\nfunctions: {taken: {handler: {builtin: ping}}}\n", want: "fn.yaml:2:13: the function taken is already declared"},
		{name: "fn.yaml not YAML", args: []string{"fn1", "--lang", "bash"}, manifest: "version: 1\nfunctions: [\n", want: "fn.yaml: invalid YAML"},
		{name: "fn.yaml a list", args: []string{"fn1", "--lang", "bash"}, manifest: "- a\n- b\n", want: "fn.yaml:1:1: expected a mapping with the keys version and functions, got a list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.manifest != "" {
				writeFile(t, root, "fn.yaml", tc.manifest)
			}
			if tc.setup != nil {
				tc.setup(t, root)
			}
			before := listTree(t, root)
			out, errOut, code := runShoal(t, root, append([]string{"new"}, tc.args...)...)
			if code != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q (stdout %q)", code, errOut, tc.want, out)
			}
			if after := listTree(t, root); after != before {
				t.Errorf("files changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestNewManifest pins down how shoal new adds the entry to fn.yaml: a
// missing file is created; an existing one gets the entry appended, its
// text kept byte for byte, when that lands under functions; otherwise the
// file is left alone and the entry printed.
func TestNewManifest(t *testing.T) {
	const entry = "  fn1:\n    source: fn1\n    handler:\n      exec:\n        command: [bash, handler.sh]\n"
	const commented = `# fn.yaml: the functions this Shoal deployment serves.
version: 1
functions:
  ping:
    handler:
      builtin: ping
    # async:
    #   enabled: false
# the end
`
	for _, tc := range []struct {
		name     string
		manifest *string // nil: no file
		want     string  // the file afterwards
		manual   string  // in stdout when the file is left alone
	}{
		{name: "missing file is created", want: manifestHeader + "version: 1\nfunctions:\n" + entry},
		{name: "comments are kept", manifest: ptr(commented), want: commented + entry},
		{
			name:     "the file's indentation is followed",
			manifest: ptr("version: 1\nfunctions:\n    ping:\n        handler: {builtin: ping}\n"),
			want:     "version: 1\nfunctions:\n    ping:\n        handler: {builtin: ping}\n" + "    fn1:\n        source: fn1\n        handler:\n            exec:\n                command: [bash, handler.sh]\n",
		},
		{name: "no newline at the end", manifest: ptr("version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}"), want: "version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n" + entry},
		{
			name:     "Windows line endings are kept",
			manifest: ptr("version: 1\r\nfunctions:\r\n  ping:\r\n    handler: {builtin: ping}\r\n"),
			want:     "version: 1\r\nfunctions:\r\n  ping:\r\n    handler: {builtin: ping}\r\n" + strings.ReplaceAll(entry, "\n", "\r\n"),
		},
		{name: "functions empty", manifest: ptr("version: 1\nfunctions:\n"), want: "version: 1\nfunctions:\n" + entry},
		{name: "no functions key", manifest: ptr("version: 1\n"), want: "version: 1\nfunctions:\n" + entry},
		{name: "empty file", manifest: ptr(""), want: "version: 1\nfunctions:\n" + entry},
		{name: "only comments", manifest: ptr("# to do\n"), want: "# to do\nversion: 1\nfunctions:\n" + entry},
		{
			name:     "functions not the last key",
			manifest: ptr("functions:\n  ping:\n    handler: {builtin: ping}\nversion: 1\n"),
			manual:   "functions (line 1) is not its last top-level key",
		},
		{
			name:     "functions in flow style",
			manifest: ptr("version: 1\nfunctions: {ping: {handler: {builtin: ping}}}\n"),
			manual:   "functions (line 2) is written in flow style",
		},
		{
			name:     "document end marker",
			manifest: ptr("version: 1\nfunctions:\n  ping:\n    handler: {builtin: ping}\n...\n"),
			manual:   "would not put it under functions",
		},
		{
			name:     "two documents",
			manifest: ptr("version: 1\nfunctions: {}\n---\nversion: 1\n"),
			manual:   "it holds more than one YAML document",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			file := filepath.Join(root, "fn.yaml")
			if tc.manifest != nil {
				writeFile(t, root, "fn.yaml", *tc.manifest)
			}
			out, errOut, code := runShoal(t, root, "new", "fn1", "--lang", "bash")
			if code != 0 {
				t.Fatalf("exit %d\n%s%s", code, out, errOut)
			}
			if _, err := os.Stat(filepath.Join(root, "fn1", "handler.sh")); err != nil {
				t.Errorf("function not written: %v", err)
			}
			got := readFile(t, file)
			if tc.manual != "" {
				if got != *tc.manifest {
					t.Errorf("fn.yaml changed to:\n%s", got)
				}
				for _, want := range []string{"fn.yaml: left unchanged: ", tc.manual, "add this entry under functions: yourself:\n" + entry} {
					if !strings.Contains(out, want) {
						t.Errorf("stdout lacks %q:\n%s", want, out)
					}
				}
				return
			}
			if got != tc.want {
				t.Errorf("fn.yaml:\n%s\nwant:\n%s", got, tc.want)
			}
			if fn := entryOf(t, file, "fn1"); fn.Handler.Exec == nil || fn.Source != "fn1" {
				t.Errorf("fn.yaml does not read back as declaring fn1: %+v", fn)
			}
			if !strings.Contains(out, "next steps:\n  shoal deploy -f fn.yaml\n  shoal invoke fn1") {
				t.Errorf("stdout lacks the next steps:\n%s", out)
			}
		})
	}
}

// TestNewSourceRelativeToManifest: source is the function's directory as
// seen from the manifest's, whatever the current directory.
func TestNewSourceRelativeToManifest(t *testing.T) {
	root := t.TempDir()
	for _, tc := range []struct{ name, dir, file, want string }{
		{"nested", "functions/a", "fn.yaml", "functions/a"},
		{"beside", "b", "conf/fn.yaml", "../b"},
		{"weird", "c dir/1.0", "fn.yaml", `"c dir/1.0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.MkdirAll(filepath.Join(root, filepath.Dir(tc.file)), 0o755); err != nil {
				t.Fatal(err)
			}
			name := "fn-" + tc.name
			out, errOut, code := runShoal(t, root, "new", name, "--lang", "go", "--dir", tc.dir, "-f", tc.file)
			if code != 0 {
				t.Fatalf("exit %d\n%s%s", code, out, errOut)
			}
			text := readFile(t, filepath.Join(root, tc.file))
			if want := "    source: " + tc.want + "\n"; !strings.Contains(text, want) {
				t.Errorf("fn.yaml lacks %q:\n%s", want, text)
			}
			if fn := entryOf(t, filepath.Join(root, tc.file), name); filepath.Join(root, filepath.Dir(tc.file), fn.Source) != filepath.Join(root, tc.dir) {
				t.Errorf("source %q does not lead to %s", fn.Source, tc.dir)
			}
		})
	}
}

// fnEntry is the part of an fn.yaml entry the tests read back.
type fnEntry struct {
	Source  string   `yaml:"source"`
	Build   []string `yaml:"build"`
	Handler struct {
		HTTP *struct {
			Command   []string `yaml:"command"`
			Readiness string   `yaml:"readiness"`
		} `yaml:"http"`
		Exec *struct {
			Command []string `yaml:"command"`
		} `yaml:"exec"`
	} `yaml:"handler"`
}

// entryOf reads the entry of function name from the manifest file.
func entryOf(t *testing.T, file, name string) fnEntry {
	t.Helper()
	var m struct {
		Functions map[string]fnEntry `yaml:"functions"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, file)), &m); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	fn, ok := m.Functions[name]
	if !ok {
		t.Fatalf("%s declares no function %s", file, name)
	}
	// What shoal new writes is what shoal deploy reads.
	if _, err := manifest.Load(file, manifest.Options{Builtins: functions.Names()}); err != nil {
		t.Errorf("the manifest shoal new wrote does not load: %v", err)
	}
	return fn
}

func checkGofmt(t *testing.T, file string) {
	t.Helper()
	src := readFile(t, file)
	formatted, err := format.Source([]byte(src))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if string(formatted) != src {
		t.Errorf("%s is not gofmt-ed", file)
	}
}

func readFile(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// listTree lists every file under root with its content, one per line.
func listTree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(p)
		if !d.IsDir() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b.WriteString(" " + string(data))
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
