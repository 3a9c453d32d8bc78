package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBench runs shoal bench as a real process, briefly, without Node.js:
// every configuration answers without error, the JSON and the SVG hold
// what docs/benchmarks.md says, memory is measured (on Linux), and
// nothing is left behind: no process, no temporary directory.
func TestBench(t *testing.T) {
	dir, tmp := t.TempDir(), t.TempDir()
	jsonFile, chart := filepath.Join(dir, "bench.json"), filepath.Join(dir, "bench.svg")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	prof := filepath.Join(dir, "prof", "new") // made by --profile
	cmd := exec.CommandContext(ctx, os.Args[0], "bench", "--duration", "1s", "--warmup", "200ms", "--connections", "8",
		"--idle-conns", "200", "--skip", "node", "--json", jsonFile, "--chart", chart, "--profile", prof)
	cmd.Env = append(os.Environ(), beShoal+"=1", "TMPDIR="+tmp)
	cmd.Dir = dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("shoal bench: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	t.Logf("shoal bench ran in %s:\n%s", time.Since(start).Round(time.Millisecond), out.String())
	for _, want := range []string{"[1/5] gateway: warm-up 200ms", "[5/5] nats:"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("no progress line %q on stderr:\n%s", want, errOut.String())
		}
	}
	if !strings.Contains(out.String(), "configuration") || !strings.Contains(out.String(), "gateway-auth / go-http") {
		t.Errorf("no table on stdout:\n%s", out.String())
	}

	for _, name := range []string{"up.pprof", "up.pprof.worker-1", "up.pprof.worker-2", "up.allocs.pprof", "up.allocs.pprof.worker-1"} {
		if st, err := os.Stat(filepath.Join(prof, name)); err != nil || st.Size() == 0 {
			t.Errorf("--profile: %s: %v", name, err)
		}
	}

	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	var rep BenchReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("the JSON does not parse: %v\n%s", err, b)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"schema", "started", "machine", "settings", "results", "ratios", "memory"} {
		if _, ok := raw[field]; !ok {
			t.Errorf("the JSON has no %q", field)
		}
	}
	m := rep.Machine
	if m.CPUModel == "" || m.Cores < 1 || m.GOMAXPROCS < 1 || m.GoVersion != runtime.Version() || m.OS == "" || m.UpWorkers < 1 {
		t.Errorf("machine: %+v", m)
	}
	if rep.Settings.Connections != 8 || rep.Settings.DurationSeconds != 1 || rep.Settings.IdleConns != 200 {
		t.Errorf("settings: %+v", rep.Settings)
	}
	ran := map[string]bool{}
	for _, r := range rep.Results {
		if r.Name == cfgNode {
			if r.Skipped == "" || r.Requests != 0 {
				t.Errorf("node: %+v, want skipped", r)
			}
			continue
		}
		ran[r.Name] = true
		if r.Skipped != "" || r.Requests == 0 || r.ErrorsTotal != 0 || r.RPS <= 0 || r.Latency.P50 <= 0 || r.Latency.P99 < r.Latency.P50 {
			t.Errorf("%s: %d requests, errors %+v %v, %.0f req/s, latency %+v, skipped %q", r.Name, r.Requests, r.Errors, r.FirstErrors, r.RPS, r.Latency, r.Skipped)
		}
	}
	if len(ran) != 5 {
		t.Errorf("configurations run: %v", ran)
	}
	if len(rep.Ratios) != 5 {
		t.Errorf("ratios: %+v", rep.Ratios)
	}
	for _, r := range rep.Ratios {
		measured := !strings.Contains(r.Name, cfgNode)
		if measured != (r.Value != nil) {
			t.Errorf("ratio %s: value %v, note %q", r.Name, r.Value, r.Note)
		}
	}

	if runtime.GOOS == "linux" {
		mem := rep.Memory
		if !mem.Available || mem.UpPID == 0 || mem.UpIdleKiB <= 0 || mem.UpLoadKiB <= 0 {
			t.Errorf("memory: %+v", mem)
		}
		for _, set := range [][]ProcRSS{mem.RunnersIdle, mem.RunnersLoad} {
			if len(set) != m.UpWorkers {
				t.Errorf("runner RSS of %d workers, want %d: %+v", len(set), m.UpWorkers, set)
			}
			for _, p := range set {
				if p.KiB <= 0 || p.PID <= 0 {
					t.Errorf("runner RSS: %+v", p)
				}
			}
		}
		for _, idle := range []*IdleReport{mem.UpIdleConns, mem.GatewayIdleConns} {
			if idle == nil {
				t.Error("no idle-connection figures")
				continue
			}
			if idle.Open != 200 || idle.Alive != 200 || idle.BeforeKiB <= 0 || idle.AfterKiB <= 0 || idle.SocketsAfter < 200 {
				t.Errorf("idle connections: %+v", idle)
			}
		}
		// Every process the benchmark started is gone.
		pids := []int{mem.UpPID, mem.GatewayIdleConns.PID}
		for _, p := range mem.RunnersIdle {
			pids = append(pids, p.PID)
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("pid %d still exists after shoal bench (%v)", pid, err)
			}
		}
	}

	svg, err := os.ReadFile(chart)
	if err != nil {
		t.Fatal(err)
	}
	var texts strings.Builder
	d := xml.NewDecoder(bytes.NewReader(svg))
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the SVG does not parse as XML: %v", err)
		}
		if cd, ok := tok.(xml.CharData); ok {
			texts.Write(cd)
		}
	}
	for _, c := range benchConfigs {
		if !strings.Contains(texts.String(), c.name) {
			t.Errorf("the SVG does not name %s", c.name)
		}
	}

	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("shoal bench left %d entries in its temporary directory, e.g. %s", len(left), left[0].Name())
	}
}

func TestBenchFlags(t *testing.T) {
	for _, tc := range []struct {
		o    benchOptions
		want string
	}{
		{benchOptions{duration: time.Second, connections: 1, only: []string{"gateway", "nope"}}, `unknown configuration "nope"`},
		{benchOptions{duration: time.Second, connections: 1, only: []string{"node"}, skip: []string{"node"}}, "no configuration"},
		{benchOptions{duration: 0, connections: 1}, "--duration"},
		{benchOptions{duration: time.Second, connections: 0}, "--connections"},
		{benchOptions{duration: time.Second, connections: 1, idleConns: -1}, "--idle-conns"},
	} {
		err := tc.o.check()
		if err == nil {
			_, err = tc.o.selected()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", tc.o, err, tc.want)
		}
	}
	o := benchOptions{skip: []string{cfgNode, cfgNATS}}
	got, err := o.selected()
	if err != nil || len(got) != 4 || got[0].name != cfgGateway {
		t.Errorf("--skip node,nats: %v %v", got, err)
	}
}

func TestBenchRatios(t *testing.T) {
	r := newBenchReport(benchOptions{duration: time.Second, connections: 64})
	set := func(name string, rps, p99 float64, errs uint64) {
		x := r.result(name)
		x.ran, x.RPS, x.Latency.P99, x.Latency.Samples, x.ErrorsTotal = true, rps, p99, 1, errs
	}
	set(cfgGatewayAuth, 30000, 4.2, 0)
	set(cfgGateway, 32000, 4, 0)
	set(cfgGoHTTP, 70000, 2, 0)
	set(cfgShoalNATS, 50000, 2, 3)
	set(cfgNATS, 60000, 1, 0)
	r.finish(benchConfigs[:5])
	want := map[string]struct {
		value float64
		met   *bool
	}{
		"gateway-auth / go-http": {30000.0 / 70000, ptr(false)},
		"shoal-nats / nats":      {50000.0 / 60000, ptr(false)}, // 0.83 but errors
		"gateway-auth / gateway": {30000.0 / 32000, nil},
		"gateway-auth p99":       {4.2, ptr(true)},
	}
	for _, x := range r.Ratios {
		w, ok := want[x.Name]
		if !ok {
			if x.Value != nil || !strings.Contains(x.Note, "node") {
				t.Errorf("%s: %+v, want not measured", x.Name, x)
			}
			continue
		}
		if x.Value == nil || *x.Value != w.value || (w.met == nil) != (x.Met == nil) || (w.met != nil && *w.met != *x.Met) {
			t.Errorf("%s: %+v, want %v met %v", x.Name, x, w.value, w.met)
		}
	}
	var out strings.Builder
	if err := r.writeText(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "not selected") || !strings.Contains(out.String(), "MISSED") {
		t.Errorf("text:\n%s", out.String())
	}
	if got := thousands(1234567.4); got != "1,234,567" {
		t.Errorf("thousands: %s", got)
	}
}

func ptr[T any](v T) *T { return &v }
