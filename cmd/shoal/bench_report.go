package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/shoal-dev/shoal"
	"github.com/shoal-dev/shoal/platform/loadgen"
)

// BenchReport is everything one shoal bench run measured; --json writes
// it as is (docs/benchmarks.md describes the fields).
type BenchReport struct {
	// Schema is the version of this JSON shape.
	Schema   int            `json:"schema"`
	Started  time.Time      `json:"started"`
	Shoal    string         `json:"shoal_version"`
	Machine  BenchMachine   `json:"machine"`
	Settings BenchSettings  `json:"settings"`
	Results  []*BenchResult `json:"results"`
	Ratios   []BenchRatio   `json:"ratios"`
	Memory   BenchMemory    `json:"memory"`
}

// BenchMachine describes the machine the run measured.
type BenchMachine struct {
	CPUModel   string `json:"cpu_model"`
	Cores      int    `json:"cores"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	// LoadAverage is /proc/loadavg's 1, 5 and 15 minute figures when the
	// run started: above the cores, something else was using the CPUs.
	LoadAverage string `json:"load_average,omitempty"`
	Node        string `json:"node_version,omitempty"`
	Express     string `json:"express_version,omitempty"`
	// UpWorkers and WorkerGOMAXPROCS are shoal up's worker processes and
	// the GOMAXPROCS of each (the raw NATS responders copy them).
	UpWorkers        int `json:"up_workers"`
	WorkerGOMAXPROCS int `json:"worker_gomaxprocs"`
}

// BenchSettings are the run's flags.
type BenchSettings struct {
	DurationSeconds float64 `json:"duration_seconds"`
	WarmupSeconds   float64 `json:"warmup_seconds"`
	// NodeWarmupSeconds is the node configuration's least warm-up.
	NodeWarmupSeconds float64 `json:"node_warmup_seconds"`
	Connections       int     `json:"connections"`
	IdleConns         int     `json:"idle_conns"`
}

// BenchResult is one configuration's load.
type BenchResult struct {
	Name      string `json:"name"`
	Title     string `json:"title"`
	Transport string `json:"transport"`
	// Skipped says why the configuration did not run; empty if it ran.
	Skipped        string         `json:"skipped,omitempty"`
	Requests       uint64         `json:"requests"`
	WarmupRequests uint64         `json:"warmup_requests"`
	Errors         loadgen.Errors `json:"errors"`
	ErrorsTotal    uint64         `json:"errors_total"`
	ElapsedSeconds float64        `json:"elapsed_seconds"`
	RPS            float64        `json:"rps"`
	Latency        BenchLatency   `json:"latency_ms"`
	FirstErrors    []string       `json:"first_errors,omitempty"`
	ran            bool
}

// BenchLatency are latency figures in milliseconds.
type BenchLatency struct {
	P50     float64 `json:"p50"`
	P90     float64 `json:"p90"`
	P99     float64 `json:"p99"`
	Max     float64 `json:"max"`
	Mean    float64 `json:"mean"`
	Samples int     `json:"samples"`
}

// BenchRatio is one comparison and its target.
type BenchRatio struct {
	Name string `json:"name"`
	// Value is the ratio of req/s (or, for a latency target, the
	// latency in ms); absent when a side did not run.
	Value  *float64 `json:"value,omitempty"`
	Target string   `json:"target,omitempty"`
	// Met is whether the target is met (and both sides ran without
	// errors); absent without a target or a value.
	Met  *bool  `json:"met,omitempty"`
	Note string `json:"note,omitempty"`
}

// BenchMemory are the memory figures (VmRSS, KiB).
type BenchMemory struct {
	Available bool   `json:"available"`
	Note      string `json:"note,omitempty"`
	// UpPID is shoal up's process: the gateway and the embedded NATS
	// server.
	UpPID     int   `json:"up_pid,omitempty"`
	UpIdleKiB int64 `json:"up_idle_rss_kib,omitempty"`
	// UpLoadKiB is up's RSS at the end of the gateway-auth load.
	UpLoadKiB int64 `json:"up_load_rss_kib,omitempty"`
	// RunnersIdle are the workers before any load; RunnersLoad at the end
	// of the gateway-auth load.
	RunnersIdle      []ProcRSS   `json:"runners_idle,omitempty"`
	RunnersLoad      []ProcRSS   `json:"runners_load,omitempty"`
	UpIdleConns      *IdleReport `json:"up_idle_conns,omitempty"`
	GatewayIdleConns *IdleReport `json:"gateway_idle_conns,omitempty"`
}

// benchSchema is BenchReport's Schema.
const benchSchema = 1

func newBenchReport(o benchOptions) *BenchReport {
	r := &BenchReport{
		Schema: benchSchema, Started: time.Now().UTC().Truncate(time.Second), Shoal: shoal.Version,
		Machine: BenchMachine{
			CPUModel: cpuModel(), Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
			GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		},
		Settings: BenchSettings{DurationSeconds: o.duration.Seconds(), WarmupSeconds: o.warmup.Seconds(), NodeWarmupSeconds: o.nodeWarmup.Seconds(), Connections: o.connections, IdleConns: o.idleConns},
		Memory:   BenchMemory{Available: procAvailable()},
	}
	r.Machine.UpWorkers, r.Machine.WorkerGOMAXPROCS = upWorkerShape()
	r.Machine.LoadAverage = loadAverage()
	if !r.Memory.Available {
		r.Memory.Note = errNoProc.Error()
	}
	for _, c := range benchConfigs {
		r.Results = append(r.Results, &BenchResult{Name: c.name, Title: c.title, Transport: c.transport})
	}
	return r
}

func (r *BenchReport) result(name string) *BenchResult {
	for _, x := range r.Results {
		if x.Name == name {
			return x
		}
	}
	panic("no bench configuration " + name) // a programming error
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// record keeps a configuration's load result.
func (r *BenchReport) record(name string, res *loadgen.Result) *BenchResult {
	x := r.result(name)
	x.ran, x.Skipped = true, ""
	x.Requests, x.WarmupRequests, x.Errors, x.ErrorsTotal = res.Requests, res.Warmup, res.Errors, res.Errors.Total()
	x.ElapsedSeconds, x.RPS = res.Elapsed.Seconds(), res.Rate()
	l := res.Latency
	x.Latency = BenchLatency{P50: ms(l.P50), P90: ms(l.P90), P99: ms(l.P99), Max: ms(l.Max), Mean: ms(l.Mean), Samples: l.Samples}
	x.FirstErrors = res.FirstErrors
	return x
}

// skip records why a configuration did not run.
func (r *BenchReport) skip(name, why string) { r.result(name).Skipped = why }

// finish marks the configurations left out and computes the ratios.
func (r *BenchReport) finish(selected []benchConfig) {
	for _, x := range r.Results {
		if x.ran || x.Skipped != "" {
			continue
		}
		x.Skipped = "not selected (--only/--skip)"
		for _, c := range selected {
			if c.name == x.Name {
				x.Skipped = "did not run"
			}
		}
	}
	ratio := func(of, to string, target float64) BenchRatio {
		a, b := r.result(of), r.result(to)
		br := BenchRatio{Name: of + " / " + to}
		if target > 0 {
			br.Target = ">= " + strconv.FormatFloat(target, 'f', -1, 64) + "x"
		}
		switch {
		case !a.ran || !b.ran:
			br.Note = "not measured: " + strings.Join(notRun(a, b), ", ")
			return br
		case b.RPS == 0:
			br.Note = to + " answered nothing"
			return br
		}
		v := a.RPS / b.RPS
		br.Value = &v
		if target > 0 {
			met := v >= target && a.ErrorsTotal == 0 && b.ErrorsTotal == 0
			br.Met = &met
		}
		if a.ErrorsTotal > 0 || b.ErrorsTotal > 0 {
			br.Note = "errors during the load"
		}
		return br
	}
	r.Ratios = []BenchRatio{
		ratio(cfgGatewayAuth, cfgNode, 3),
		ratio(cfgGatewayAuth, cfgGoHTTP, 0.5),
		ratio(cfgShoalNATS, cfgNATS, 0.8),
		ratio(cfgGatewayAuth, cfgGateway, 0),
	}
	p99 := BenchRatio{Name: cfgGatewayAuth + " p99", Target: "< 5ms"}
	if a := r.result(cfgGatewayAuth); a.ran && a.Latency.Samples > 0 {
		v := a.Latency.P99
		met := v < 5 && a.ErrorsTotal == 0
		p99.Value, p99.Met = &v, &met
	} else {
		p99.Note = "not measured: " + cfgGatewayAuth
	}
	r.Ratios = append(r.Ratios, p99)
}

func notRun(rs ...*BenchResult) []string {
	var out []string
	for _, x := range rs {
		if !x.ran {
			out = append(out, x.Name)
		}
	}
	return out
}

// writeJSON writes the report to path.
func (r *BenchReport) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the results: %w", err)
	}
	if err := writeFileAtomic(path, append(b, '\n')); err != nil {
		return fmt.Errorf("write the results: %w", err)
	}
	return nil
}

// writeText prints the report as plain-text tables.
func (r *BenchReport) writeText(w io.Writer) error {
	m := r.Machine
	var b strings.Builder
	st := r.Settings
	warmup := seconds(st.WarmupSeconds).String()
	if st.NodeWarmupSeconds > st.WarmupSeconds && r.result(cfgNode).ran {
		warmup += " (node: " + seconds(st.NodeWarmupSeconds).String() + ")"
	}
	fmt.Fprintf(&b, "shoal bench: %s per configuration after a %s warm-up, %d connections (HTTP keep-alive) or concurrent requesters (NATS)\n",
		seconds(st.DurationSeconds), warmup, st.Connections)
	fmt.Fprintf(&b, "machine: %s, %d cores, GOMAXPROCS %d, %s %s/%s", m.CPUModel, m.Cores, m.GOMAXPROCS, m.GoVersion, m.OS, m.Arch)
	if m.Node != "" {
		fmt.Fprintf(&b, ", node %s (express %s)", m.Node, m.Express)
	}
	fmt.Fprintf(&b, "; shoal up: %d workers of GOMAXPROCS %d; %s", m.UpWorkers, m.WorkerGOMAXPROCS, r.Started.Format(time.RFC3339))
	if m.LoadAverage != "" {
		fmt.Fprintf(&b, "; load average at start %s", m.LoadAverage)
	}
	b.WriteString("\n\n")

	rows := [][]string{{"configuration", "req/s", "p50", "p90", "p99", "max", "errors", "description"}}
	for _, x := range r.Results {
		if !x.ran {
			rows = append(rows, []string{x.Name, "-", "-", "-", "-", "-", "-", x.Title + ": skipped, " + x.Skipped})
			continue
		}
		rows = append(rows, []string{x.Name, thousands(x.RPS), fmtMS(x.Latency.P50), fmtMS(x.Latency.P90),
			fmtMS(x.Latency.P99), fmtMS(x.Latency.Max), errorsText(x.Errors), x.Title})
	}
	writeTable(&b, rows, []bool{false, true, true, true, true, true, true, false})
	b.WriteString("\n")
	rows = [][]string{{"target", "value", "want", "result"}}
	for _, x := range r.Ratios {
		value, result := "-", "-"
		if x.Value != nil {
			if strings.HasSuffix(x.Name, "p99") {
				value = fmt.Sprintf("%.2fms", *x.Value)
			} else {
				value = fmt.Sprintf("%.2fx", *x.Value)
			}
		}
		if x.Met != nil {
			result = "MISSED"
			if *x.Met {
				result = "met"
			}
		}
		if x.Note != "" {
			result += " (" + x.Note + ")"
		}
		want := x.Target
		if want == "" {
			want = "-"
		}
		rows = append(rows, []string{x.Name, value, want, result})
	}
	writeTable(&b, rows, []bool{false, true, false, false})
	b.WriteString("\n")
	r.Memory.writeText(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

func (mem *BenchMemory) writeText(b *strings.Builder) {
	b.WriteString("memory (VmRSS)\n")
	if !mem.Available {
		fmt.Fprintf(b, "  unavailable: %s\n", mem.Note)
		return
	}
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
	if len(mem.RunnersIdle) > 0 {
		fmt.Fprintf(tw, "  runner workers, idle\t%s\n", procsText(mem.RunnersIdle))
	}
	if len(mem.RunnersLoad) > 0 {
		fmt.Fprintf(tw, "  runner workers, end of gateway-auth load\t%s\n", procsText(mem.RunnersLoad))
	}
	if mem.UpIdleKiB > 0 {
		line := "idle " + mib(mem.UpIdleKiB)
		if mem.UpLoadKiB > 0 {
			line += ", end of gateway-auth load " + mib(mem.UpLoadKiB)
		}
		fmt.Fprintf(tw, "  shoal up (gateway + embedded NATS, pid %d)\t%s\n", mem.UpPID, line)
	}
	for _, rep := range []*IdleReport{mem.UpIdleConns, mem.GatewayIdleConns} {
		if rep != nil {
			fmt.Fprintf(tw, "  %s, %s idle connections\t%s\n", rep.Process, thousands(float64(rep.Requested)), rep.detail())
		}
	}
	if len(mem.RunnersIdle) == 0 && mem.UpIdleConns == nil {
		fmt.Fprintln(tw, "  not measured (shoal up did not run)")
	}
	_ = tw.Flush() // a strings.Builder does not fail
}

func procsText(ps []ProcRSS) string {
	var parts []string
	for _, p := range ps {
		s := fmt.Sprintf("worker %d (pid %d) %s", p.Worker, p.PID, mib(p.KiB))
		if p.Error != "" {
			s = fmt.Sprintf("worker %d (pid %d): %s", p.Worker, p.PID, p.Error)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// detail is an IdleReport's figures on one line.
func (rep *IdleReport) detail() string {
	s := fmt.Sprintf("%s -> %s (%+.1f KiB per connection); %s open, %s alive, server sockets %s -> %s",
		mib(rep.BeforeKiB), mib(rep.AfterKiB), rep.PerConnKiB, thousands(float64(rep.Open)), aliveText(rep.Alive),
		thousands(float64(rep.SocketsBefore)), thousands(float64(rep.SocketsAfter)))
	if rep.Failed > 0 {
		s += fmt.Sprintf("; %d failed (%s)", rep.Failed, rep.FirstError)
	}
	return s
}

// summary is an IdleReport as a progress line.
func (rep *IdleReport) summary() string { return rep.Process + ": " + rep.detail() }

func aliveText(n int) string {
	if n < 0 {
		return "? (not checked here)"
	}
	return thousands(float64(n))
}

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

func errorsText(e loadgen.Errors) string {
	if e.Total() == 0 {
		return "0"
	}
	var parts []string
	for _, p := range []struct {
		n    uint64
		kind string
	}{{e.Status, "status"}, {e.Body, "body"}, {e.Transport, "transport"}, {e.NATS, "nats"}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", p.n, p.kind))
		}
	}
	return strings.Join(parts, ", ")
}

// thousands formats a number rounded to an integer with thousands
// separators.
func thousands(v float64) string {
	n := int64(v + 0.5)
	s := strconv.FormatInt(n, 10)
	if n < 0 {
		return s
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// writeTable writes rows as columns two spaces apart, right-aligned
// where right says so; the last column is not padded.
func writeTable(b *strings.Builder, rows [][]string, right []bool) {
	widths := make([]int, len(right))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	for _, row := range rows {
		var line strings.Builder
		for i, cell := range row {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell))
			switch {
			case i == len(row)-1 && !right[i]:
				line.WriteString(cell)
			case right[i]:
				line.WriteString(pad + cell)
			default:
				line.WriteString(cell + pad)
			}
			if i < len(row)-1 {
				line.WriteString("  ")
			}
		}
		b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
	}
}

// seconds turns a figure in seconds back into a duration.
func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// fmtMS formats milliseconds.
func fmtMS(d float64) string { return strconv.FormatFloat(d, 'f', 2, 64) + "ms" }
