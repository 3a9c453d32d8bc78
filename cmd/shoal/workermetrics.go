package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/shoal-dev/shoal/platform/supervisor"
)

// workerScrapeTimeout bounds the scrape of one worker's metrics: a worker
// that does not answer within it is left out of that scrape.
const workerScrapeTimeout = 2 * time.Second

// workerMetricsFD is the file descriptor of the metrics listener in a
// worker: the supervisor puts its readiness pipe at 3 and the command's
// extra files after it.
const workerMetricsFD = 4

// workerMetrics gathers the metrics of shoal up's workers for the
// gateway's GET /metrics, each labelled worker="SLOT".
//
// up opens one loopback listener per worker slot and hands it to every
// worker the slot forks, as an inherited file descriptor (shoal runner
// --health-fd): the worker serves /healthz, /readyz and /metrics on it.
// The address is the slot's for up's life, whatever the re-forks, and no
// port is picked by one process for another to take, so none can be
// taken in between. up keeps its copy of each listener open (never
// accepting on it) and closes them at the end.
type workerMetrics struct {
	slots  []workerSlot // by slot - 1
	client *http.Client
	// timeout bounds each scrape of a worker: workerScrapeTimeout.
	timeout time.Duration
	// workers reports the supervisor's workers; set once it runs.
	mu      sync.Mutex
	workers func() []supervisor.WorkerInfo
}

// workerSlot is the metrics listener of one slot.
type workerSlot struct {
	label string // the slot, for the worker label
	url   string
	ln    net.Listener
	file  *os.File // the descriptor workers inherit
}

// newWorkerMetrics opens the listeners of n worker slots.
func newWorkerMetrics(n int) (*workerMetrics, error) {
	wm := &workerMetrics{timeout: workerScrapeTimeout, client: &http.Client{
		// A slot's listener is shared by its old and new worker during a
		// rolling restart: a kept-alive connection would stay with the
		// old one.
		Transport: &http.Transport{DisableKeepAlives: true},
	}}
	for slot := 1; slot <= n; slot++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			wm.close()
			return nil, fmt.Errorf("worker metrics: listen for worker %d: %w", slot, err)
		}
		f, err := inheritable(ln.(*net.TCPListener))
		if err != nil {
			ln.Close()
			wm.close()
			return nil, fmt.Errorf("worker metrics: listener of worker %d: %w", slot, err)
		}
		wm.slots = append(wm.slots, workerSlot{label: strconv.Itoa(slot), url: "http://" + ln.Addr().String() + "/metrics", ln: ln, file: f})
	}
	return wm, nil
}

// inheritable returns a copy of ln's descriptor for workers to inherit.
// Not ln.File(): its Fd method, which os/exec calls at every fork, puts
// the socket into blocking mode, and with it the copy a worker of the
// slot is still accepting on (during a rolling restart), whose accept
// could then block for good. A copy made with NewFile is left as it is.
func inheritable(ln *net.TCPListener) (*os.File, error) {
	raw, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd uintptr
	var errno syscall.Errno
	if err := raw.Control(func(s uintptr) {
		fd, _, errno = syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if errno != 0 {
		return nil, fmt.Errorf("duplicate the listener's descriptor: %w", errno)
	}
	return os.NewFile(fd, "worker metrics listener"), nil
}

// files returns the extra files of a worker of slot: its listener.
func (wm *workerMetrics) files(slot int) []*os.File {
	return []*os.File{wm.slots[slot-1].file}
}

// follow tells wm which workers run (the supervisor's Workers).
func (wm *workerMetrics) follow(workers func() []supervisor.WorkerInfo) {
	wm.mu.Lock()
	wm.workers = workers
	wm.mu.Unlock()
}

// close closes up's copies of the listeners.
func (wm *workerMetrics) close() {
	for _, s := range wm.slots {
		s.file.Close()
		s.ln.Close()
	}
	wm.client.CloseIdleConnections()
}

// Gather scrapes the ready workers at once and returns their metrics,
// each with the label worker="SLOT". A worker that does not answer in
// time, or answers what cannot be read, is left out and logged; it is
// not an error of the scrape, which still serves the others and the
// gateway's own.
func (wm *workerMetrics) Gather() ([]*dto.MetricFamily, error) {
	wm.mu.Lock()
	workers := wm.workers
	wm.mu.Unlock()
	if workers == nil {
		return nil, nil
	}
	ready := map[int]bool{}
	for _, w := range workers() {
		if w.State == supervisor.StateReady {
			ready[w.Slot] = true
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), wm.timeout)
	defer cancel()
	results := make([][]*dto.MetricFamily, len(wm.slots))
	var wg sync.WaitGroup
	for i := range wm.slots {
		if !ready[i+1] {
			continue
		}
		wg.Go(func() {
			s := wm.slots[i]
			mfs, err := wm.scrape(ctx, s.url)
			if err != nil {
				logger.Warn("worker metrics left out of a scrape", "worker", s.label, "error", err)
				return
			}
			results[i] = labelled(mfs, s.label)
		})
	}
	wg.Wait()
	return merge(results), nil
}

// scrape reads one worker's metrics.
func (wm *workerMetrics) scrape(ctx context.Context, url string) ([]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
	resp, err := wm.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape: %s", resp.Status)
	}
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	var mfs []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		err := dec.Decode(mf)
		if errors.Is(err, io.EOF) {
			return mfs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the metrics: %w", err)
		}
		mfs = append(mfs, mf)
	}
}

// workerLabel names the label that tells the workers' metrics apart.
const workerLabel = "worker"

// labelled adds worker=slot to every metric of mfs, in place, keeping
// the labels sorted by name.
func labelled(mfs []*dto.MetricFamily, slot string) []*dto.MetricFamily {
	name := workerLabel
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			m.Label = slices.DeleteFunc(m.Label, func(lp *dto.LabelPair) bool { return lp.GetName() == workerLabel })
			m.Label = append(m.Label, &dto.LabelPair{Name: &name, Value: &slot})
			slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return cmp.Compare(a.GetName(), b.GetName()) })
		}
	}
	return mfs
}

// merge joins the families of several workers by name; a family whose
// type or help differs from the first worker's is left out (with a log
// line), as Prometheus would refuse the scrape.
func merge(perWorker [][]*dto.MetricFamily) []*dto.MetricFamily {
	byName := map[string]*dto.MetricFamily{}
	var out []*dto.MetricFamily
	for _, mfs := range perWorker {
		for _, mf := range mfs {
			have, ok := byName[mf.GetName()]
			switch {
			case !ok:
				byName[mf.GetName()] = mf
				out = append(out, mf)
			case have.GetType() != mf.GetType() || have.GetHelp() != mf.GetHelp():
				logger.Warn("worker metrics: a family differs between workers; left out", "metric", mf.GetName())
			default:
				have.Metric = append(have.Metric, mf.Metric...)
			}
		}
	}
	return out
}

var _ prometheus.Gatherer = (*workerMetrics)(nil)
