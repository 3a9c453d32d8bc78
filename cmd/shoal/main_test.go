package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/internal/proctest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/runner"
)

// The tests run shoal as real processes: the test binary re-executes
// itself as the shoal command when this variable is set.
const beShoal = "SHOAL_TEST_BE_SHOAL"

// testFunctions, set to 1 with beShoal, adds the test functions crash,
// sleep, fail, record, html and refuse to the built-ins.
const testFunctions = "SHOAL_TEST_FUNCTIONS"

func TestMain(m *testing.M) {
	if os.Getenv(beShoal) == "1" {
		if os.Getenv(testFunctions) == "1" {
			extraBuiltins = map[string]http.Handler{
				// crash ends its worker process, as a fatal bug would.
				"crash": http.HandlerFunc(func(http.ResponseWriter, *http.Request) { os.Exit(3) }),
				"sleep": functionstest.Builtins(nil)["sleep"],
				// fail always fails, for asynchronous retries and dead letters.
				"fail": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					http.Error(w, "fails on purpose", http.StatusInternalServerError)
				}),
				// record notes each execution in a file (async_test.go).
				"record": http.HandlerFunc(recordCall),
				// html answers the request's body verbatim as HTML, with
				// markup in a header too: what the console must show as
				// text (console_browser_test.go).
				"html": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					body, _ := io.ReadAll(r.Body)
					w.Header().Set("Content-Type", "text/html; charset=utf-8")
					w.Header().Set("X-Markup", markupHeader)
					_, _ = w.Write(body)
				}),
				// refuse answers 401 invalid_token, the gateway's refusal of a
				// token, from the function's own code.
				"refuse": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					invocation.Errorf(http.StatusUnauthorized, invocation.CodeInvalidToken, "refused by the function itself").WriteHTTP(w)
				}),
			}
		}
		main()
		os.Exit(0)
	}
	// shoal up saves a nats CLI context under the user's configuration
	// directory: keep the tests' out of the real one. Child processes
	// inherit the environment.
	config, err := os.MkdirTemp("", "shoal-test-config")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_CONFIG_HOME", config)
	code := m.Run()
	os.RemoveAll(config)
	os.Exit(code)
}

// proc is a shoal process whose log the test reads line by line.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string
	mu    sync.Mutex
	log   []string
	done  chan struct{}
	err   error
}

func startShoal(t *testing.T, args ...string) *proc {
	t.Helper()
	return startShoalEnv(t, nil, args...)
}

// startShoalEnv is startShoal with variables added to the environment.
func startShoalEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), beShoal+"=1"), env...)
	cmd.Dir = t.TempDir()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, lines: make(chan string, 1000), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log = append(p.log, sc.Text())
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("log of shoal %s:\n%s", strings.Join(args, " "), p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.log, "\n")
}

// waitLog waits for a log line matching re and returns its submatches.
func (p *proc) waitLog(re string) []string {
	p.t.Helper()
	rx := regexp.MustCompile(re)
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line := <-p.lines:
			if m := rx.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-p.done:
			p.t.Fatalf("shoal exited (%v) before logging %q", p.err, re)
		case <-timeout:
			p.t.Fatalf("no log line matching %q within 30s", re)
		}
	}
}

// stop sends sig and waits for the process to exit; it returns the exit
// error (nil for status 0).
func (p *proc) stop(sig syscall.Signal) error {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(30 * time.Second):
		p.t.Fatalf("shoal did not exit within 30s of %v", sig)
		return nil
	}
}

func repoManifest(t *testing.T) string {
	path, err := filepath.Abs("../../fn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// kidOf returns the kid in a token's header.
func kidOf(t *testing.T, tok string) string {
	t.Helper()
	head, _, _ := strings.Cut(strings.TrimSpace(tok), ".")
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		t.Fatalf("token header: %v", err)
	}
	var h struct {
		KID string `json:"kid"`
	}
	if err := json.Unmarshal(b, &h); err != nil || h.KID == "" {
		t.Fatalf("token header %s: %v", b, err)
	}
	return h.KID
}

// post sends body to url with a bearer token (none if empty).
func post(t *testing.T, url, body, bearer string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// connectAs connects to NATS with an NKey seed file.
func connectAs(t *testing.T, url, seed string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, append(opts, opt)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// runShoal runs a shoal command to completion.
func runShoal(t *testing.T, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runShoalIn(t, dir, "", args...)
}

// runShoalIn runs a shoal command to completion with stdin as its input.
func runShoalIn(t *testing.T, dir, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runShoalWith(t, dir, stdin, nil, args...)
}

// runShoalEnv runs a shoal command to completion with variables added to
// its environment.
func runShoalEnv(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runShoalWith(t, dir, "", env, args...)
}

func runShoalWith(t *testing.T, dir, stdin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	stdout, stderr, code = proctest.Run(dir, append([]string{beShoal + "=1"}, env...), stdin, append([]string{os.Args[0]}, args...)...)
	if code == -1 {
		t.Fatalf("shoal %s: %s", strings.Join(args, " "), stderr)
	}
	return stdout, stderr, code
}

// TestUp starts `shoal up` as a real process: it answers pong! over HTTP
// and NATS, and exits 0 on SIGTERM with nothing accepted left unanswered.
func TestUp(t *testing.T) {
	data := t.TempDir()
	p := startShoal(t, "up", "-f", repoManifest(t), "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "2")
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving" workers=2`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]

	if status, body := get(t, gw+"/function/ping"); status != 200 || body != "pong!" {
		t.Errorf("GET /function/ping = %d %q", status, body)
	}
	if _, err := os.Stat(filepath.Join(data, "jetstream")); err != nil {
		t.Errorf("JetStream store not under --data: %v", err)
	}
	dir := t.TempDir()
	admin := []string{"--data", data, "--nats", natsURL}

	// A user logs in through the auth function and calls echo, which
	// needs the echo permission.
	out, errOut, code := runShoalIn(t, dir, "correct horse\n", append([]string{"user", "add", "alice", "--perm", "echo", "--password-stdin"}, admin...)...)
	if code != 0 {
		t.Fatalf("shoal user add = %d %s %s", code, out, errOut)
	}
	out, _, code = runShoal(t, dir, append([]string{"user", "list"}, admin...)...)
	if code != 0 || !regexp.MustCompile(`(?m)^alice\s+echo\s`).MatchString(out) {
		t.Errorf("shoal user list = %d %q", code, out)
	}
	// A second user comes and goes; a duplicate is refused.
	if _, errOut, code := runShoalIn(t, dir, "another pass\n", append([]string{"user", "add", "alice", "--password-stdin"}, admin...)...); code != 1 || !strings.Contains(errOut, "exists") {
		t.Errorf("shoal user add of an existing user = %d %s", code, errOut)
	}
	if _, errOut, code := runShoalIn(t, dir, "bob's password\n", append([]string{"user", "add", "bob", "--perm", "ping", "--password-stdin"}, admin...)...); code != 0 {
		t.Fatalf("shoal user add bob = %d %s", code, errOut)
	}
	if _, errOut, code := runShoal(t, dir, append([]string{"user", "rm", "bob"}, admin...)...); code != 0 {
		t.Errorf("shoal user rm bob = %d %s", code, errOut)
	}
	if out, _, _ := runShoal(t, dir, append([]string{"user", "list"}, admin...)...); strings.Contains(out, "bob") {
		t.Errorf("bob still listed after shoal user rm:\n%s", out)
	}
	if _, errOut, code := runShoal(t, dir, append([]string{"user", "rm", "bob"}, admin...)...); code != 1 || !strings.Contains(errOut, "bob") {
		t.Errorf("shoal user rm of a missing user = %d %s", code, errOut)
	}
	status, body := post(t, gw+"/function/auth/token", `{"username":"alice","password":"correct horse"}`, "")
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal([]byte(body), &tok); status != 200 || err != nil || tok.AccessToken == "" {
		t.Fatalf("login = %d %s", status, body)
	}
	if status, body := post(t, gw+"/function/echo", "hi", tok.AccessToken); status != 200 || !strings.Contains(body, `"body": "hi"`) {
		t.Errorf("echo with alice's token = %d %s", status, body)
	}
	if status, body := post(t, gw+"/function/echo", "hi", ""); status != 401 || !strings.Contains(body, "invalid_token") {
		t.Errorf("echo without a token = %d %s", status, body)
	}
	// A new password and new permissions apply to the next login.
	if _, errOut, code := runShoalIn(t, dir, "battery staple\n", append([]string{"user", "passwd", "alice", "--password-stdin"}, admin...)...); code != 0 {
		t.Fatalf("shoal user passwd = %d %s", code, errOut)
	}
	if _, errOut, code := runShoal(t, dir, append([]string{"user", "perm", "alice", "--perm", "ping"}, admin...)...); code != 0 {
		t.Fatalf("shoal user perm = %d %s", code, errOut)
	}
	if status, body := post(t, gw+"/function/auth/token", `{"username":"alice","password":"correct horse"}`, ""); status != 401 {
		t.Errorf("login with the old password = %d %s", status, body)
	}
	status, body = post(t, gw+"/function/auth/token", `{"username":"alice","password":"battery staple"}`, "")
	var tok2 struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal([]byte(body), &tok2); status != 200 || err != nil {
		t.Fatalf("login with the new password = %d %s", status, body)
	}
	if status, body := post(t, gw+"/function/echo", "hi", tok2.AccessToken); status != 403 {
		t.Errorf("echo with a token of the new permissions (ping only) = %d %s", status, body)
	}
	if _, errOut, code := runShoal(t, dir, append([]string{"user", "perm", "nobody", "--perm", "ping"}, admin...)...); code == 0 || !strings.Contains(errOut, "nobody") {
		t.Errorf("shoal user perm of a missing user = %d %s", code, errOut)
	}
	// shoal token finds the signing key in the data directory by itself.
	minted, errOut, code := runShoal(t, dir, "token", "--data", data, "--sub", "ops", "--perm", "echo", "--ttl", "5m")
	minted = strings.TrimSpace(minted)
	if code != 0 || strings.Count(minted, ".") != 2 {
		t.Fatalf("shoal token = %d %q %s", code, minted, errOut)
	}
	// A token of the first key that no verifier has seen (none caches it).
	unseen, _, _ := runShoal(t, dir, "token", "--data", data, "--sub", "ops", "--perm", "echo", "--ttl", "5m")
	unseen = strings.TrimSpace(unseen)

	// The saved nats CLI context holds the client role's credentials.
	ctxFile := filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "nats", "context", "shoal.json")
	if fi, err := os.Stat(ctxFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("nats context %s: %v %v", ctxFile, fi, err)
	} else if b, _ := os.ReadFile(ctxFile); !strings.Contains(string(b), "client.nk") || !strings.Contains(string(b), `"inbox_prefix": "_INBOX_client"`) {
		t.Errorf("nats context: %s", b)
	}

	// Rotation without downtime: a new key signs, and tokens of the old
	// one keep working while it is published.
	if out, errOut, code := runShoal(t, dir, append([]string{"key", "rotate"}, admin...)...); code != 0 || !strings.Contains(out, "new signing key") {
		t.Fatalf("shoal key rotate = %d %s %s", code, out, errOut)
	}
	rotated, _, _ := runShoal(t, dir, "token", "--data", data, "--sub", "ops", "--perm", "echo")
	if kidOf(t, rotated) == kidOf(t, minted) {
		t.Errorf("after rotation the token is still signed by %s", kidOf(t, minted))
	}
	for _, tok := range []string{minted, strings.TrimSpace(rotated)} {
		if status, body := post(t, gw+"/function/echo", "hi", tok); status != 200 {
			t.Errorf("echo with the token of key %s = %d %s", kidOf(t, tok), status, body)
		}
	}
	if out, _, code := runShoal(t, dir, append([]string{"key", "ls"}, admin...)...); code != 0 || strings.Count(out, "yes") != 5 {
		t.Errorf("shoal key ls = %d\n%s", code, out)
	}
	// The key that signs cannot be withdrawn; the old one can, and its
	// tokens stop verifying.
	newKID, oldKID := kidOf(t, rotated), kidOf(t, minted)
	if _, errOut, code := runShoal(t, dir, append([]string{"key", "rm", newKID}, admin...)...); code != 1 || !strings.Contains(errOut, "rotate first") {
		t.Errorf("shoal key rm of the signing key = %d %s", code, errOut)
	}
	if out, errOut, code := runShoal(t, dir, append([]string{"key", "rm", oldKID}, admin...)...); code != 0 || !strings.Contains(out, "withdrawn") {
		t.Fatalf("shoal key rm %s = %d %s %s", oldKID, code, out, errOut)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if status, _ := post(t, gw+"/function/echo", "hi", unseen); status == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a token of the withdrawn key still passes after 10s")
		}
	}

	// shoal invoke, through the gateway and over NATS with the client
	// context shoal up saved.
	for _, via := range [][]string{{"--gateway", gw}, {"--nats-context", "shoal"}} {
		out, errOut, code := runShoal(t, dir, append([]string{"invoke", "ping"}, via...)...)
		if code != 0 || out != "pong!" {
			t.Errorf("shoal invoke ping %v = %d %q %s", via, code, out, errOut)
		}
		out, errOut, code = runShoal(t, dir, append([]string{"invoke", "echo", "--token", strings.TrimSpace(rotated), "-d", "hi", "-X", "PUT", "--path", "/x/y?z=1", "-H", "X-A: b"}, via...)...)
		if code != 0 || !strings.Contains(out, `"method": "PUT"`) || !strings.Contains(out, `"path": "/x/y"`) || !strings.Contains(out, `"X-A"`) || !strings.Contains(out, `"body": "hi"`) {
			t.Errorf("shoal invoke echo %v = %d %s %s", via, code, out, errOut)
		}
		if _, errOut, code := runShoal(t, dir, append([]string{"invoke", "echo", "-d", "hi"}, via...)...); code != 1 || !strings.Contains(errOut, "401 invalid_token") {
			t.Errorf("shoal invoke echo without a token %v = %d %s", via, code, errOut)
		}
	}
	if _, errOut, code := runShoal(t, dir, "invoke", "nope", "--gateway", gw); code != 1 || !strings.Contains(errOut, "404 function_not_found") {
		t.Errorf("shoal invoke nope = %d %s", code, errOut)
	}

	// NATS admits no stranger.
	if nc, err := nats.Connect(natsURL); err == nil {
		nc.Close()
		t.Error("the embedded NATS server accepted a connection without credentials")
	}
	// The runner workers registered with the NATS services framework.
	nc := connectAs(t, natsURL, filepath.Join(data, "credentials", "admin.nk"))
	if n := len(discover(t, nc, micro.PingVerb)); n != 2 {
		t.Errorf("%d runner instances answer $SRV.PING, want 2", n)
	}

	// SIGTERM while requests flow: every request a handler took is
	// answered pong! (a request held in flight across shutdown is tested
	// in platform/gateway, TestShutdownDrainsInFlight).
	// One connection per request, so that the only ways for a request not
	// to be served are these: the dial is refused (listener closed), the
	// connection is reset (it was still in the listener's backlog), or it
	// is closed unanswered (net/http drops a request whose header it reads
	// after Shutdown began, before any handler runs). Each of those means
	// no handler ran; a request that reached a handler must get pong!.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var ok, bad atomic.Int64
	var firstBad atomic.Value
	stopLoad := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 5000 { // bounded
				select {
				case <-stopLoad:
					return
				default:
				}
				resp, err := client.Get(gw + "/function/ping")
				if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) {
					continue // not served, see above
				}
				if err != nil {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, err.Error())
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 && string(b) == "pong!" {
					ok.Add(1)
				} else {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, fmt.Sprintf("%d %s", resp.StatusCode, b))
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	err := p.stop(syscall.SIGTERM)
	close(stopLoad)
	wg.Wait()
	if err != nil {
		t.Errorf("shoal up exited with %v on SIGTERM, want status 0", err)
	}
	if !strings.Contains(p.output(), `msg="stopped cleanly"`) {
		t.Error(`shoal up did not log "stopped cleanly"`)
	}
	if bad.Load() > 0 || ok.Load() == 0 {
		t.Errorf("during shutdown: %d answered pong!, %d answered otherwise (first: %v)", ok.Load(), bad.Load(), firstBad.Load())
	}
}

// discover sends a services discovery request to every runner and
// collects the answers.
func discover(t *testing.T, nc *nats.Conn, verb micro.Verb) []*nats.Msg {
	t.Helper()
	msgs, err := invocation.Discover(t.Context(), nc, verb, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// serviceStats collects every runner's STATS, by instance id.
func serviceStats(t *testing.T, nc *nats.Conn) map[string]micro.Stats {
	t.Helper()
	out := map[string]micro.Stats{}
	for _, msg := range discover(t, nc, micro.StatsVerb) {
		var st micro.Stats
		if err := json.Unmarshal(msg.Data, &st); err != nil {
			t.Fatal(err)
		}
		out[st.ID] = st
	}
	return out
}

func completed(t *testing.T, st micro.Stats, function string) uint64 {
	t.Helper()
	for _, ep := range st.Endpoints {
		if ep.Name == function {
			var d runner.EndpointStats
			if err := json.Unmarshal(ep.Data, &d); err != nil {
				t.Fatal(err)
			}
			return d.Completed
		}
	}
	return 0
}

// TestSeparateRoles runs `shoal gateway` and three `shoal runner`
// processes against one NATS server: the runners share the load, and one
// stopped with SIGTERM while requests flow loses none of them.
func TestSeparateRoles(t *testing.T) {
	s, creds := brokertest.StartSecured(t)
	fn := repoManifest(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "signing.jwks")
	as := func(role broker.Role) []string {
		return []string{"--nats", s.ClientURL(), "--nats-nkey", creds.SeedFile(role)}
	}
	// The operator creates the signing key and publishes its public half.
	if out, errOut, code := runShoal(t, dir, append([]string{"key", "rotate", "--key", keyFile}, as(broker.RoleAdmin)...)...); code != 0 {
		t.Fatalf("shoal key rotate = %d %s %s", code, out, errOut)
	}
	var runners []*proc
	for range 3 {
		r := startShoal(t, append([]string{"runner", "-f", fn, "--key", keyFile}, as(broker.RoleAuth)...)...)
		r.waitLog(`msg="runner serving"`)
		runners = append(runners, r)
	}
	g := startShoal(t, append([]string{"gateway", "-f", fn, "--http", "127.0.0.1:0"}, as(broker.RoleGateway)...)...)
	gw := g.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	nc := brokertest.ConnectAs(t, s, creds, broker.RoleAdmin)
	minted, errOut, code := runShoal(t, dir, "token", "--key", keyFile, "--sub", "load", "--perm", "echo")
	if code != 0 {
		t.Fatalf("shoal token = %d %s", code, errOut)
	}
	bearer := "Bearer " + strings.TrimSpace(minted)

	var failures atomic.Int64
	var firstErr atomic.Value
	jobs := make(chan int)
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for range 8 {
		wg.Go(func() {
			for range jobs {
				var resp *http.Response
				req, err := http.NewRequest("POST", gw+"/function/echo", strings.NewReader("x"))
				if err == nil {
					req.Header.Set("Authorization", bearer)
					resp, err = client.Do(req)
				}
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = errors.New(resp.Status)
					}
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	for i := range 300 {
		if i == 150 {
			stats := serviceStats(t, nc)
			if len(stats) != 3 {
				t.Fatalf("%d runners answer STATS, want 3", len(stats))
			}
			for id, st := range stats {
				if completed(t, st, "echo") == 0 {
					t.Errorf("runner %s served none of the first 150 requests", id)
				}
			}
			// Stop one runner while the load goes on.
			go func() {
				if err := runners[0].stop(syscall.SIGTERM); err != nil {
					t.Errorf("runner exited with %v on SIGTERM, want status 0", err)
				}
			}()
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	<-runners[0].done
	if n := failures.Load(); n > 0 {
		t.Errorf("%d of 300 requests failed; first: %v", n, firstErr.Load())
	}
	if n := len(serviceStats(t, nc)); n != 2 {
		t.Errorf("%d runners left after one stopped, want 2", n)
	}
	if err := g.stop(syscall.SIGINT); err != nil {
		t.Errorf("gateway exited with %v on SIGINT, want status 0", err)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	bad := `version: 1
functions:
  ping:
    handler: {builtin: pnig}
    timeout: 30
  ping:
    handler: {builtin: ping}
`
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runShoal(t, dir, "validate", "-f", "bad.yaml")
	if code != 1 || out != "" {
		t.Errorf("validate bad.yaml: exit %d, stdout %q", code, out)
	}
	for _, want := range []string{
		`bad.yaml:4:24: functions.ping.handler.builtin: unknown built-in function "pnig"; this build has: auth, echo, ping`,
		`bad.yaml:5:14: functions.ping.timeout: expected a duration with a unit`,
		`bad.yaml:6:3: functions.ping: duplicate key; first defined at line 3`,
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}

	out, errOut, code = runShoal(t, dir, "validate", "-f", repoManifest(t))
	if code != 0 || !strings.Contains(out, "valid, 3 function(s): ping, echo, auth") {
		t.Errorf("validate fn.yaml: exit %d %q %q", code, out, errOut)
	}

	// up refuses a bad manifest before it listens anywhere.
	_, errOut, code = runShoal(t, dir, "up", "-f", "bad.yaml", "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0")
	if code != 1 || !strings.Contains(errOut, "bad.yaml:5:14:") || strings.Contains(errOut, "listening") {
		t.Errorf("up with a bad manifest: exit %d\n%s", code, errOut)
	}
}

func TestInvokeWithoutPlatform(t *testing.T) {
	_, errOut, code := runShoal(t, t.TempDir(), "invoke", "ping", "--gateway", "http://127.0.0.1:1", "--timeout", "5s")
	if code != 1 || !strings.Contains(errOut, "invoke ping:") {
		t.Errorf("invoke with no gateway: exit %d %s", code, errOut)
	}
	s, creds := brokertest.StartSecured(t)
	_, errOut, code = runShoal(t, t.TempDir(), "invoke", "ping", "--nats", s.ClientURL(), "--timeout", "5s",
		"--nats-nkey", creds.SeedFile(broker.RoleClient), "--nats-inbox-prefix", broker.ClientInboxPrefix)
	if code != 1 || !strings.Contains(errOut, "no runner is serving ping") {
		t.Errorf("invoke with no runner: exit %d %s", code, errOut)
	}
}

// TestUpPortTaken: a start that fails half-way (the HTTP port is taken)
// says why, undoes what started and exits 1.
func TestUpPortTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, errOut, code := runShoal(t, t.TempDir(), "up", "-f", repoManifest(t), "--http", taken.Addr().String(), "--nats", "127.0.0.1:0", "--workers", "1")
	if code != 1 || !strings.Contains(errOut, "address already in use") {
		t.Errorf("up on a taken port: exit %d\n%s", code, errOut)
	}
}
