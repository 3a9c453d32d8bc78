// Package examples tests the example functions of examples/fn.yaml by
// running each one standalone, the way its entry says and Shoal's runner
// will: from a copy of its source directory, build first, then the
// handler's command with PORT (listen: port), or SHOAL_SOCKET and PORT
// both set to a socket's path (listen: unix), or the request in its
// environment and stdin (exec).
//
// The examples need node and npm (hello-node) and python3 (hello-python);
// a test whose tool is missing is skipped, or fails when
// SHOAL_REQUIRE_RUNTIMES=1 (for CI, where they must be installed). With
// npm present, a failing `npm ci` fails the test: it needs the npm
// registry.
package examples

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/internal/proctest"
	"github.com/shoal-dev/shoal/manifest"
	"go.yaml.in/yaml/v3"
)

// function is the part of an examples/fn.yaml entry the tests use.
type function struct {
	Source  string   `yaml:"source"`
	Build   []string `yaml:"build"`
	Handler struct {
		HTTP *struct {
			Command   []string `yaml:"command"`
			Listen    string   `yaml:"listen"`
			Readiness string   `yaml:"readiness"`
		} `yaml:"http"`
		Exec *struct {
			Command []string `yaml:"command"`
		} `yaml:"exec"`
	} `yaml:"handler"`
}

// server is an http example started by a test: get sends it requests.
type server struct {
	t      *testing.T
	client *http.Client
	base   string
}

func (s *server) get(path string) (int, string) {
	s.t.Helper()
	resp, err := s.client.Get(s.base + path)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// answers holds, for each example, what it must answer once ready: an
// example without an entry here fails TestExamples.
var answers = map[string]func(t *testing.T, dir string, srv *server, call execCall){
	"hello-node": func(t *testing.T, _ string, srv *server, _ execCall) {
		if status, body := srv.get("/ping"); status != http.StatusOK || body != "pong!" {
			t.Errorf("GET /ping: %d %q, want 200 pong!", status, body)
		}
		if status, _ := srv.get("/nothing"); status != http.StatusNotFound {
			t.Errorf("GET /nothing: %d, want 404", status)
		}
	},
	"hello-python": func(t *testing.T, _ string, srv *server, _ execCall) {
		status, body := srv.get("/greet?name=Ada&x=1&x=2")
		var got map[string]any
		if err := json.Unmarshal([]byte(body), &got); status != http.StatusOK || err != nil {
			t.Fatalf("GET /greet: %d %q (%v), want 200 and JSON", status, body, err)
		}
		want := map[string]any{
			"greeting": "Hello, Ada!", "function": "hello-python", "method": "GET", "path": "/greet",
			"query": map[string]any{"name": []any{"Ada"}, "x": []any{"1", "2"}},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("GET /greet: %v, want %v", got, want)
		}
	},
	"hello-go": func(t *testing.T, dir string, srv *server, _ execCall) {
		const want = "Hello, Go! (GET /x, function \"hello-go\")\n"
		if status, body := srv.get("/x?name=Go"); status != http.StatusOK || body != want {
			t.Errorf("GET /x on its socket: %d %q, want 200 %q", status, body, want)
		}
		// Run by hand, as its README says, it listens on PORT instead.
		port := proctest.FreePort(t)
		p := proctest.Start(t, dir, []string{"PORT=" + port, "SHOAL_FUNCTION=hello-go"}, "./hello")
		byHand := waitReady(t, p, &http.Client{Timeout: 5 * time.Second}, "http://127.0.0.1:"+port, "/")
		if status, body := byHand.get("/x?name=Go"); status != http.StatusOK || body != want {
			t.Errorf("GET /x on PORT: %d %q, want 200 %q", status, body, want)
		}
	},
	"hello-bash": func(t *testing.T, _ string, _ *server, call execCall) {
		stdout, stderr, code := call([]string{
			"SHOAL_METHOD=POST", "SHOAL_PATH=/greet", "SHOAL_QUERY=name=Ada&x=1", "SHOAL_REQUEST_ID=r1",
			"HTTP_USER_AGENT=test", "HTTP_ACCEPT=text/plain, */*", "CONTENT_TYPE=text/plain", "CONTENT_LENGTH=9",
		}, "some body")
		want := "Hello, Ada, from bash!\nmethod: POST\npath: /greet\nquery: name=Ada&x=1\n" +
			"headers:\n  HTTP_ACCEPT=text/plain, */*\n  HTTP_USER_AGENT=test\nbody:\nsome body"
		if code != 0 || stdout != want {
			t.Errorf("POST /greet: exit %d, stdout %q, stderr %q; want exit 0 and %q", code, stdout, stderr, want)
		}
		stdout, stderr, code = call([]string{"SHOAL_METHOD=GET", "SHOAL_PATH=/", "SHOAL_QUERY=a=b&fail=1"}, "")
		if code != 1 || !strings.Contains(stderr, "failing on purpose") {
			t.Errorf("GET /?a=b&fail=1: exit %d, stdout %q, stderr %q; want exit 1 and a message on stderr", code, stdout, stderr)
		}
	},
}

// execCall runs an exec example once with env added and stdin as the body.
type execCall func(env []string, stdin string) (stdout, stderr string, code int)

// TestExamples runs every function of examples/fn.yaml as its entry says.
func TestExamples(t *testing.T) {
	var m struct {
		Functions map[string]function `yaml:"functions"`
	}
	data, err := os.ReadFile("fn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatalf("fn.yaml: %v", err)
	}
	// The file is what shoal deploy reads, with its strict checks.
	if _, err := manifest.Load("fn.yaml", manifest.Options{Builtins: functions.Names()}); err != nil {
		t.Errorf("fn.yaml does not load: %v", err)
	}
	for _, name := range slices.Sorted(maps.Keys(m.Functions)) {
		fn := m.Functions[name]
		t.Run(name, func(t *testing.T) {
			check, ok := answers[name]
			if !ok {
				t.Fatalf("no test says what %s must answer: add it to answers", name)
			}
			if _, err := os.Stat(filepath.Join(fn.Source, "README.md")); err != nil {
				t.Errorf("%s has no README.md: %v", fn.Source, err)
			}
			var command []string
			switch {
			case fn.Handler.HTTP != nil && fn.Handler.Exec == nil:
				command = fn.Handler.HTTP.Command
			case fn.Handler.Exec != nil && fn.Handler.HTTP == nil:
				command = fn.Handler.Exec.Command
			default:
				t.Fatalf("want exactly one of handler.http, handler.exec: %+v", fn.Handler)
			}
			for _, argv := range [][]string{fn.Build, command} {
				if len(argv) > 0 && !strings.HasPrefix(argv[0], "./") {
					proctest.NeedTool(t, argv[0])
				}
			}
			dir := copyDir(t, fn.Source)
			if len(fn.Build) > 0 {
				if _, stderr, code := proctest.Run(dir, nil, "", fn.Build...); code != 0 {
					t.Fatalf("build %s: exit %d\n%s", strings.Join(fn.Build, " "), code, stderr)
				}
			}
			env := []string{"SHOAL_FUNCTION=" + name}
			if fn.Handler.Exec != nil {
				check(t, dir, nil, func(more []string, stdin string) (string, string, int) {
					return proctest.Run(dir, append(env, more...), stdin, command...)
				})
				return
			}
			h := fn.Handler.HTTP
			client := &http.Client{Timeout: 5 * time.Second}
			base := ""
			switch h.Listen {
			case "", "port":
				port := proctest.FreePort(t)
				env = append(env, "PORT="+port)
				base = "http://127.0.0.1:" + port
			case "unix":
				sock := filepath.Join(shortTempDir(t), "fn.sock")
				// PORT too, as the runner sets it: Node's
				// server.listen(PORT) listens on a path.
				env = append(env, "SHOAL_SOCKET="+sock, "PORT="+sock)
				client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", sock)
				}}
				base = "http://" + name
			default:
				t.Fatalf("listen %q: want port or unix", h.Listen)
			}
			p := proctest.Start(t, dir, env, command...)
			readiness := h.Readiness
			if readiness == "" {
				readiness = "/"
			}
			check(t, dir, waitReady(t, p, client, base, readiness), nil)
		})
	}
}

// copyDir copies the example's source directory into a temporary one, as
// Shoal runs a function from an unpacked copy of its code, leaving out
// what a local run may have left there (node_modules, __pycache__).
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || d.Name() == "__pycache__") {
			return filepath.SkipDir
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
	return dst
}

// shortTempDir is a temporary directory with a short path: a Unix socket
// path must fit in about 100 bytes, which t.TempDir's may not.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "shoal-ex")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// waitReady waits until the example answers GET path below 500, as
// Shoal's readiness check does, and returns it as a server.
func waitReady(t *testing.T, p *proctest.Process, client *http.Client, base, path string) *server {
	t.Helper()
	proctest.WaitGet(t, p, client, base+path, func(status int) bool { return status < http.StatusInternalServerError })
	return &server{t: t, client: client, base: base}
}
