package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/supervisor"
	"github.com/shoal-dev/shoal/token"
)

// workerCommand builds the command line of `shoal up`'s worker processes:
// this binary, as `shoal runner`, with the flags of up that concern
// runners.
type workerCommand struct {
	exe  string
	args []string
}

func newWorkerCommand(o upOptions, m *manifest.Manifest, url string, creds *broker.Credentials, keyFile string, keys []jwkset.JWK) (*workerCommand, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this program to start workers: %w", err)
	}
	manifestPath, err := filepath.Abs(m.File)
	if err != nil {
		return nil, err
	}
	// Every worker serves the auth function too, so it runs as the auth
	// role: on one machine the workers are one trust domain.
	args := []string{
		"runner",
		"-f", manifestPath,
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
	hs := o.trust.hsKeys
	for _, k := range keys {
		if k.Marshal().KTY == jwkset.KtyOct && hs == "" {
			hs = keyFile // the key file's own shared secrets
		}
	}
	if hs != "" {
		args = append(args, "--hs256-keys", hs)
	}
	if o.trust.oidcIssuer != "" {
		args = append(args, "--oidc-issuer", o.trust.oidcIssuer, "--oidc-audience", o.trust.oidcAudience, "--oidc-jwks", o.trust.oidcJWKS)
	}
	return &workerCommand{exe: exe, args: args}, nil
}

// command is the supervisor's Command: a fresh process for a slot.
func (w *workerCommand) command(slot int) *exec.Cmd {
	cmd := exec.Command(w.exe, append(append([]string(nil), w.args...), "--worker", strconv.Itoa(slot))...)
	cmd.Env = os.Environ()
	return cmd
}

// workerOutput logs a line a worker wrote, with the worker's slot and pid.
func workerOutput(slot, pid int, stream, line string) {
	logger.LogAttrs(context.Background(), slog.LevelInfo, line,
		slog.Int("worker", slot), slog.Int("pid", pid), slog.String("stream", stream))
}

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
// for `shoal restart`.
const pidFileName = "shoal.pid"

// writePIDFile records this process's pid, refusing when another live
// `shoal up` holds the data directory.
func writePIDFile(data string) (string, error) {
	path := filepath.Join(data, pidFileName)
	if pid, err := readPID(path); err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
		return "", fmt.Errorf("another shoal up (pid %d) uses the data directory %s", pid, data)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
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
			path := filepath.Join(data, pidFileName)
			pid, err := readPID(path)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no shoal up is running with the data directory %s (no %s)", data, path)
			}
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

// served collects every runner's completed invocations by instance id;
// a runner that does not answer within 300 ms counts none.
func (s *systemInfo) served(ctx context.Context) map[string]uint64 {
	out := map[string]uint64{}
	inbox := s.nc.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return out
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest("$SRV.STATS."+invocation.ServiceName, inbox, nil); err != nil {
		return out
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	for {
		wait := time.Until(deadline)
		if wait <= 0 || ctx.Err() != nil {
			return out
		}
		msg, err := sub.NextMsg(wait)
		if err != nil {
			return out
		}
		var st micro.Stats
		if json.Unmarshal(msg.Data, &st) != nil {
			continue
		}
		for _, ep := range st.Endpoints {
			var d runner.EndpointStats
			if json.Unmarshal(ep.Data, &d) == nil {
				out[st.ID] += d.Completed
			}
		}
	}
}

// systemPermission is the permission a token needs for /system/ routes.
const systemPermission = "system:read"

func newPSCmd() *cobra.Command {
	var (
		gw, data, keyFile string
		asJSON            bool
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
			if keyFile == "" {
				keyFile = keyFilePath(data)
			}
			s, err := token.NewFileSigner(keyFile, defaultIssuer, defaultAudience)
			if err != nil {
				return fmt.Errorf("signing key: %w", err)
			}
			tok, _, err := s.Sign("shoal-ps", []string{systemPermission}, time.Minute)
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
	return cmd
}
