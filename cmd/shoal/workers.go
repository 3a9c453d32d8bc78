package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/supervisor"
)

// workerCommand builds the command line of `shoal up`'s worker processes:
// this binary, as `shoal runner`, with the flags of up that concern
// runners.
type workerCommand struct {
	exe  string
	args []string
	// procs is each worker's GOMAXPROCS: the CPUs divided among them.
	procs int
	// metrics, when set, gives each worker its slot's metrics listener.
	metrics *workerMetrics
}

func newWorkerCommand(o upOptions, url string, creds *broker.Credentials, keyFile string) (*workerCommand, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this program to start workers: %w", err)
	}
	// Every worker follows the catalog, which up deployed the manifest
	// into, and serves the auth function too, so it runs as the auth
	// role: on one machine the workers are one trust domain.
	args := []string{
		"runner",
		"--nats", url,
		"--nats-nkey", creds.SeedFile(broker.RoleAuth),
		"--nats-inbox-prefix", broker.InboxPrefix(broker.RoleAuth),
		"--key", keyFile,
		"--drain-timeout", o.drain.String(),
		"--log-format", rootFlags.logFormat,
		"--log-level", rootFlags.logLevel,
		"--token-issuer", o.trust.issuer,
		"--token-audience", o.trust.audience,
		"--token-leeway", o.trust.leeway.String(),
		"--token-ttl", o.auth.ttl.String(),
		"--login-limit-user", strconv.Itoa(o.auth.limits.PerUser),
		"--login-limit-addr", strconv.Itoa(o.auth.limits.PerAddr),
		"--login-window", o.auth.limits.Window.String(),
	}
	args = append(args, o.async.args()...)
	args = append(args, o.processes.args()...)
	// The key file's own shared secrets reach the workers through --key.
	if o.trust.hsKeys != "" {
		args = append(args, "--hs256-keys", o.trust.hsKeys)
	}
	if o.trust.oidcIssuer != "" {
		args = append(args, "--oidc-issuer", o.trust.oidcIssuer, "--oidc-audience", o.trust.oidcAudience, "--oidc-jwks", o.trust.oidcJWKS)
	}
	return &workerCommand{exe: exe, args: args, procs: max(runtime.NumCPU()/o.workers, 1)}, nil
}

// command is the supervisor's Command: a fresh process for a slot.
func (w *workerCommand) command(slot int) *exec.Cmd {
	args := append(append([]string(nil), w.args...), "--worker", strconv.Itoa(slot))
	if w.metrics != nil {
		args = append(args, "--health-fd", strconv.Itoa(workerMetricsFD))
	}
	if rootFlags.cpuProfile != "" {
		args = append(args, "--cpu-profile", workerProfile(rootFlags.cpuProfile, slot))
	}
	if rootFlags.memProfile != "" {
		args = append(args, "--mem-profile", workerProfile(rootFlags.memProfile, slot))
	}
	cmd := exec.Command(w.exe, args...)
	if w.metrics != nil {
		cmd.ExtraFiles = w.metrics.files(slot)
	}
	// The worker's flags are all on its command line: up's SHOAL_*
	// variables, meant for up's own flags, must not set the runner's
	// (SHOAL_FILE would pin the workers to a file instead of the catalog).
	cmd.Env = []string{} // never nil: nil would hand the worker up's whole environment
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) || strings.HasPrefix(kv, "SHOAL_TEST_") { // SHOAL_TEST_*: the tests' own switches
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if w.procs > 0 && os.Getenv("GOMAXPROCS") == "" {
		// The workers share the machine's CPUs with each other and with
		// up (NATS, the gateway): one scheduler thread each per CPU share
		// keeps them from contending for the same cores.
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(w.procs))
	}
	return cmd
}

// workerOutput passes a line a worker wrote to up's standard error,
// marked with the worker's slot and pid, whatever its level: the worker
// filtered its log by the same --log-level already, and what it writes
// otherwise (a panic's trace) must never be lost. A JSON log line gets
// the marks as fields; any other line gets them as a prefix.
func workerOutput(slot, pid int, _ string, line string) {
	var out string
	if strings.HasPrefix(line, "{") && strings.HasSuffix(line, "}") {
		out = fmt.Sprintf(`{"worker":%d,"pid":%d,%s`, slot, pid, line[1:])
	} else {
		out = fmt.Sprintf("worker=%d pid=%d %s", slot, pid, line)
	}
	workerOutputMu.Lock()
	defer workerOutputMu.Unlock()
	_, _ = fmt.Fprintln(os.Stderr, out) // nowhere else to report it
}

// workerOutputMu keeps the workers' lines whole on standard error.
var workerOutputMu sync.Mutex

func workerPIDs(sup *supervisor.Supervisor) []int {
	var pids []int
	for _, w := range sup.Workers() {
		if w.PID > 0 {
			pids = append(pids, w.PID)
		}
	}
	return pids
}

// runnerLoss tells the gateway of a worker that died, so that the
// invocations it was running fail at once instead of at their timeout.
type runnerLoss struct {
	mu sync.Mutex
	gw *gateway.Gateway
}

func (l *runnerLoss) set(g *gateway.Gateway) {
	l.mu.Lock()
	l.gw = g
	l.mu.Unlock()
}

func (l *runnerLoss) report(w supervisor.WorkerInfo) {
	l.mu.Lock()
	g := l.gw
	l.mu.Unlock()
	if g != nil && w.Ready != "" {
		g.RunnerLost(w.Ready)
	}
}

// pidFileName, under the data directory, holds the pid of `shoal up`,
// for `shoal restart`. up holds an exclusive lock on it while it runs, so
// a file left behind by an up that died is known for stale, and its pid,
// perhaps another process's by now, is never signalled.
const pidFileName = "shoal.pid"

// pidFile is the locked pid file of a running up.
type pidFile struct{ f *os.File }

// lockPIDFile takes the data directory's pid file and writes this
// process's pid in it, refusing when another live up holds it.
func lockPIDFile(data string) (*pidFile, error) {
	path := filepath.Join(data, pidFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pid file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid, _ := readPID(path)
			return nil, fmt.Errorf("another shoal up (pid %d) uses the data directory %s", pid, data)
		}
		return nil, fmt.Errorf("lock the pid file %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("pid file: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("pid file: %w", err)
	}
	return &pidFile{f: f}, nil
}

// release removes the pid file and drops the lock.
func (p *pidFile) release() {
	_ = os.Remove(p.f.Name())
	_ = p.f.Close()
}

// runningUp returns the pid of the up that holds the data directory's pid
// file, or an error when none does.
func runningUp(data string) (int, error) {
	path := filepath.Join(data, pidFileName)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("no shoal up is running with the data directory %s (no %s)", data, path)
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// If the lock can be taken, nobody holds it: the file is stale.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		return 0, fmt.Errorf("no shoal up is running with the data directory %s (%s is stale)", data, path)
	} else if !errors.Is(err, syscall.EWOULDBLOCK) {
		return 0, fmt.Errorf("check the pid file %s: %w", path, err)
	}
	return readPID(path)
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s does not hold a pid", path)
	}
	return pid, nil
}

func newRestartCmd() *cobra.Command {
	var data string
	cmd := &cobra.Command{
		Use:   "restart",
		Short: "Replace the workers of a running shoal up one at a time (a rolling restart)",
		Long: `Ask the shoal up that uses the data directory for a rolling restart of its
workers, as SIGHUP does: each new worker starts and serves before the old one
drains, so no request fails. The restart runs in shoal up; follow its log.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pid, err := runningUp(data)
			if err != nil {
				return err
			}
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				return fmt.Errorf("signal shoal up (pid %d): %w", pid, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rolling restart requested from shoal up (pid %d)\n", pid)
			return nil
		},
	}
	cmd.Flags().StringVar(&data, "data", ".shoal", "data directory of the shoal up to restart")
	return cmd
}

// WorkerStatus is one worker in GET /system/workers and shoal ps.
type WorkerStatus struct {
	Worker   int       `json:"worker"`
	PID      int       `json:"pid"`
	State    string    `json:"state"`
	Started  time.Time `json:"started,omitzero"`
	Uptime   string    `json:"uptime,omitempty"`
	Restarts int       `json:"restarts"`
	LastExit string    `json:"last_exit,omitempty"`
	RunnerID string    `json:"runner_id,omitempty"`
	// Served counts the invocations the worker's runner answered, from
	// its NATS services statistics.
	Served uint64 `json:"served"`
}

// systemInfo answers GET /system/workers: the supervisor's view, with
// each runner's served count from the NATS services statistics.
type systemInfo struct {
	sup *supervisor.Supervisor
	nc  *nats.Conn
}

func (s *systemInfo) workers(ctx context.Context) (any, error) {
	served := s.served(ctx)
	var out []WorkerStatus
	for _, w := range s.sup.Workers() {
		st := WorkerStatus{Worker: w.Slot, PID: w.PID, State: w.State, Restarts: w.Restarts, LastExit: w.LastExit, RunnerID: w.Ready, Served: served[w.Ready]}
		if !w.Started.IsZero() && w.PID != 0 {
			st.Started = w.Started
			st.Uptime = time.Since(w.Started).Round(time.Second).String()
		}
		out = append(out, st)
	}
	return out, nil
}

// served collects every runner's completed invocations by runner id;
// a runner that does not answer within 300 ms counts none.
func (s *systemInfo) served(ctx context.Context) map[string]uint64 {
	out := map[string]uint64{}
	msgs, err := invocation.Discover(ctx, s.nc, micro.StatsVerb, 300*time.Millisecond)
	if err != nil {
		return out
	}
	for _, msg := range msgs {
		var st micro.Stats
		if json.Unmarshal(msg.Data, &st) != nil {
			continue
		}
		for _, ep := range st.Endpoints {
			var d runner.EndpointStats
			if json.Unmarshal(ep.Data, &d) == nil {
				out[invocation.RunnerID(st.ServiceIdentity)] += d.Completed
			}
		}
	}
	return out
}

// systemPermission is the permission a token needs for /system/ routes.
const systemPermission = gateway.DefaultSystemPermission

func newPSCmd() *cobra.Command {
	var (
		gw, data, keyFile, issuer, audience string
		asJSON                              bool
	)
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the worker processes of a running shoal up",
		Long: `List the worker processes of shoal up: pid, state, uptime, restarts and
invocations served, from the gateway's GET /system/workers. The request
carries a short-lived token with the ` + systemPermission + ` permission, signed
with the key in the data directory.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := mint(keyFile, data, issuer, audience, "shoal-ps", []string{systemPermission}, time.Minute)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(gw, "/")+"/system/workers", nil)
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("ask the gateway: %w", err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
			if err != nil {
				return err
			}
			if resp.StatusCode != 200 {
				return fmt.Errorf("the gateway answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(body)
				return err
			}
			var ws []WorkerStatus
			if err := json.Unmarshal(body, &ws); err != nil {
				return fmt.Errorf("read the gateway's answer: %w", err)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "WORKER\tPID\tSTATE\tUPTIME\tRESTARTS\tSERVED\tLAST EXIT")
			for _, w := range ws {
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%d\t%s\n", w.Worker, w.PID, w.State, w.Uptime, w.Restarts, w.Served, w.LastExit)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&gw, "gateway", "http://"+defaultHTTPAddr, "gateway URL")
	cmd.Flags().StringVar(&data, "data", ".shoal", "data directory of shoal up (for the signing key)")
	cmd.Flags().StringVar(&keyFile, "key", "", "signing key file (default DATA/"+keyFileName+")")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the gateway's JSON")
	cmd.Flags().StringVar(&issuer, "token-issuer", defaultIssuer, "iss of the token, as shoal up's --token-issuer")
	cmd.Flags().StringVar(&audience, "token-audience", defaultAudience, "aud of the token, as shoal up's --token-audience")
	return cmd
}
