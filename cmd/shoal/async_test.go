package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/internal/proctest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/calls"
)

// The asynchronous-call tests run `shoal up`, or `shoal nats`, `shoal
// gateway` and `shoal runner`, as real processes, submit calls over HTTP
// and kill processes with real signals. What the functions did is read
// from a file the test function record appends to, so that duplicate
// executions (allowed: calls run at least once) are counted, not guessed.

// recordEnv names the file the test function record appends to; workers
// inherit it (SHOAL_TEST_*).
const recordEnv = "SHOAL_TEST_RECORD"

// recordCall is the test function record. It appends "start BODY PID
// UNIXNANO" to the file named by $SHOAL_TEST_RECORD, waits for the
// duration of query parameter d and, if query parameter gate names a
// file, until that file exists (both within its context), appends "end
// BODY PID UNIXNANO" and answers with the status of query parameter
// status (200 unless given). BODY is the request body, a token without
// white space, so that a test can tell each call's executions apart. Each
// line is one O_APPEND write, whole even when processes append at once.
func recordCall(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil || len(body) == 0 || len(body) > 200 || len(bytes.Fields(body)) != 1 {
		http.Error(w, "the body must be one token without white space", http.StatusBadRequest)
		return
	}
	path := os.Getenv(recordEnv)
	if path == "" {
		http.Error(w, recordEnv+" is not set", http.StatusInternalServerError)
		return
	}
	note := func(event string) error {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(f, "%s %s %d %d\n", event, body, os.Getpid(), time.Now().UnixNano())
		return errors.Join(err, f.Close())
	}
	if err := note("start"); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	q := r.URL.Query()
	d, _ := time.ParseDuration(q.Get("d"))
	select {
	case <-time.After(d):
	case <-r.Context().Done():
		return
	}
	if gate := q.Get("gate"); gate != "" {
		for { // bounded by the function's timeout
			if _, err := os.Stat(gate); err == nil {
				break
			}
			select {
			case <-time.After(10 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	}
	if err := note("end"); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	status, _ := strconv.Atoi(q.Get("status"))
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte("recorded"))
}

// execution is one line of the record file.
type execution struct {
	event string // start or end
	id    string // the call's body
	pid   int
	at    time.Time
}

// readRecord reads the record file's complete lines; a missing file has
// none.
func readRecord(t *testing.T, path string) []execution {
	t.Helper()
	execs, err := parseRecord(path)
	if err != nil {
		t.Fatal(err)
	}
	return execs
}

// parseRecord is readRecord for goroutines other than the test's.
func parseRecord(path string) ([]execution, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []execution
	sc := bufio.NewScanner(bytes.NewReader(b[:bytes.LastIndexByte(b, '\n')+1]))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 {
			return nil, fmt.Errorf("record file %s: bad line %q", path, sc.Text())
		}
		pid, err1 := strconv.Atoi(f[2])
		at, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("record file %s: bad line %q", path, sc.Text())
		}
		out = append(out, execution{event: f[0], id: f[1], pid: pid, at: time.Unix(0, at)})
	}
	return out, sc.Err()
}

// count returns how many times each call id had the event.
func count(execs []execution, event string) map[string]int {
	out := map[string]int{}
	for _, e := range execs {
		if e.event == event {
			out[e.id]++
		}
	}
	return out
}

// unfinishedBy returns the call ids that process pid started and has not
// ended.
func unfinishedBy(execs []execution, pid int) []string {
	open := map[string]int{}
	for _, e := range execs {
		if e.pid != pid {
			continue
		}
		if e.event == "start" {
			open[e.id]++
		} else {
			open[e.id]--
		}
	}
	var out []string
	for id, n := range open {
		if n > 0 {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// tally counts the executions of the accepted calls (ids: body -> call
// id) in execs: every one, and those beyond the first of each call.
func tally(execs []execution, ids map[string]string) (executions, duplicates int) {
	for body, n := range count(execs, "start") {
		if _, ok := ids[body]; ok {
			executions += n
		}
	}
	return executions, executions - len(ids)
}

// lastEnd is when the last execution in execs ended.
func lastEnd(execs []execution) time.Time {
	var last time.Time
	for _, e := range execs {
		if e.event == "end" && e.at.After(last) {
			last = e.at
		}
	}
	return last
}

// firstRun classifies each call run more than once by how its first
// execution stood at the moment at: running (started, not ended) or
// finished (ended before it). Other duplicates, whose first execution
// started after it, are returned by body.
func firstRun(execs []execution, at time.Time) (running, finished int, other []string) {
	type run struct {
		start, end time.Time
		n          int
	}
	runs := map[string]*run{}
	for _, e := range execs {
		r := runs[e.id]
		if r == nil {
			r = &run{}
			runs[e.id] = r
		}
		switch {
		case e.event == "start":
			if r.n == 0 {
				r.start = e.at
			}
			r.n++
		case r.end.IsZero():
			r.end = e.at
		}
	}
	for body, r := range runs {
		switch {
		case r.n < 2:
		case r.start.After(at):
			other = append(other, body)
		case !r.end.IsZero() && r.end.Before(at):
			finished += r.n - 1
		default:
			running += r.n - 1
		}
	}
	slices.Sort(other)
	return running, finished, other
}

// asyncManifest declares the test functions of the asynchronous-call
// tests; record and gated keep the default async settings (3 attempts).
const asyncManifest = `version: 1
functions:
  record: {handler: {builtin: record}, public: true, timeout: 30s, concurrency: 8}
  fail:
    handler: {builtin: record}
    public: true
    async: {max_deliver: 3, backoff: [0s]}
  gated: {handler: {builtin: record}, public: true, timeout: 60s, concurrency: 1}
`

// asyncUp is a running `shoal up` with asyncManifest.
type asyncUp struct {
	*cluster
	nats   string
	record string
}

// startAsyncUp starts `shoal up` with asyncManifest, workers worker
// processes and a fresh record file.
func startAsyncUp(t *testing.T, workers int, args ...string) *asyncUp {
	t.Helper()
	dir := t.TempDir()
	fn := writeFile(t, dir, "fn.yaml", asyncManifest)
	data := filepath.Join(dir, "data")
	record := filepath.Join(dir, "record")
	p := startShoalEnv(t, []string{testFunctions + "=1", recordEnv + "=" + record},
		append([]string{"up", "-f", fn, "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data,
			"--workers", strconv.Itoa(workers), "--nats-context", ""}, args...)...)
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving"`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	noDataRace(t, p)
	c := &cluster{t: t, p: p, gw: gw, data: data, dir: dir}
	c.waitWorkers(10*time.Second, allReady(workers))
	return &asyncUp{cluster: c, nats: natsURL, record: record}
}

// noDataRace fails the test if p (or a worker of it) reports a data race:
// under go test -race the shoal processes, this test binary, run with the
// race detector too.
func noDataRace(t *testing.T, p *proc) {
	t.Cleanup(func() {
		if strings.Contains(p.output(), "WARNING: DATA RACE") {
			t.Errorf("a shoal process reported a data race:\n%s", p.output())
		}
	})
}

// adminJS connects to the NATS of a data directory as the admin role.
func adminJS(t *testing.T, url, data string) jetstream.JetStream {
	t.Helper()
	creds, err := broker.LoadCredentials(credentialsPath(data))
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(connectAs(t, url, creds.SeedFile(broker.RoleAdmin)))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// asyncClient is the tests' HTTP client.
var asyncClient = &http.Client{Timeout: 20 * time.Second}

// submission is the answer to one POST /async-function/....
type submitted struct {
	status     int
	id         string
	duplicate  bool
	code       string
	retryAfter string
	took       time.Duration
}

// submitCall posts body to gw/async-function/path with the headers h.
func submitCall(gw, path, body string, h map[string]string) (submitted, error) {
	req, err := http.NewRequest("POST", gw+"/async-function/"+path, strings.NewReader(body))
	if err != nil {
		return submitted{}, err
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := asyncClient.Do(req)
	if err != nil {
		return submitted{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	s := submitted{status: resp.StatusCode, took: time.Since(start), retryAfter: resp.Header.Get("Retry-After")}
	if resp.StatusCode != http.StatusAccepted {
		if e, ok := invocation.ParseError(resp.StatusCode, b); ok {
			s.code = string(e.Code)
		}
		return s, nil
	}
	var a struct {
		ID        string `json:"id"`
		Status    string `json:"status"`
		Duplicate bool   `json:"duplicate"`
		URL       string `json:"url"`
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return s, fmt.Errorf("202 with %q: %w", b, err)
	}
	if a.ID == "" || resp.Header.Get("X-Call-Id") != a.ID || a.URL != "/calls/"+a.ID || resp.Header.Get("Location") != a.URL {
		return s, fmt.Errorf("202 with an inconsistent id: X-Call-Id %q, Location %q, body %s",
			resp.Header.Get("X-Call-Id"), resp.Header.Get("Location"), b)
	}
	s.id, s.duplicate = a.ID, a.Duplicate
	return s, nil
}

// getRecord reads GET /calls/ID.
func getRecord(gw, id string) (*calls.Record, error) {
	resp, err := asyncClient.Get(gw + "/calls/" + id)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /calls/%s = %d %s", id, resp.StatusCode, b)
	}
	var rec calls.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("GET /calls/%s: %w: %s", id, err, b)
	}
	return &rec, nil
}

// waitRecords polls the records of ids (8 at a time, every 100 ms, for
// at most limit) until done holds for each. It returns the last record
// read of every id and the ids for which done never held.
func waitRecords(t *testing.T, gw string, ids []string, limit time.Duration, done func(*calls.Record) bool) (map[string]*calls.Record, []string) {
	t.Helper()
	recs := make(map[string]*calls.Record, len(ids))
	pending := slices.Clone(ids)
	deadline := time.Now().Add(limit)
	var lastErr error
	for len(pending) > 0 {
		var mu sync.Mutex
		var still []string
		jobs := make(chan string)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for id := range jobs {
					rec, err := getRecord(gw, id)
					mu.Lock()
					if err != nil {
						lastErr = err
					} else {
						recs[id] = rec
					}
					if err != nil || !done(rec) {
						still = append(still, id)
					}
					mu.Unlock()
				}
			})
		}
		for _, id := range pending {
			jobs <- id
		}
		close(jobs)
		wg.Wait()
		pending = still
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(pending) > 0 && lastErr != nil {
		t.Logf("last error while polling records: %v", lastErr)
	}
	slices.Sort(pending)
	return recs, pending
}

func succeeded(rec *calls.Record) bool { return rec.Status == calls.Succeeded }

// byStatus counts records by status, for messages.
func byStatus(recs map[string]*calls.Record, ids []string) map[calls.Status]int {
	out := map[calls.Status]int{}
	for _, id := range ids {
		if rec := recs[id]; rec != nil {
			out[rec.Status]++
		} else {
			out["unread"]++
		}
	}
	return out
}

// waitQueueEmpty waits, for at most limit, until the calls stream holds
// no call and the consumer of function has nothing pending or
// unacknowledged: every call was acknowledged after its last attempt, so
// no redelivery (and no execution) is still to come.
func waitQueueEmpty(t *testing.T, js jetstream.JetStream, function string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		s, err := js.Stream(ctx, calls.Stream)
		var msgs uint64
		var ci *jetstream.ConsumerInfo
		if err == nil {
			msgs = s.CachedInfo().State.Msgs
			var c jetstream.Consumer
			if c, err = js.Consumer(ctx, calls.Stream, function); err == nil {
				ci = c.CachedInfo()
			}
		}
		cancel()
		if err == nil && msgs == 0 && ci.NumPending == 0 && ci.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			if ci != nil {
				t.Fatalf("calls stream not empty within %s: %d messages, consumer %s: %d pending, %d unacknowledged (%v)",
					limit, msgs, function, ci.NumPending, ci.NumAckPending, err)
			}
			t.Fatalf("calls stream not empty within %s: %d messages (%v)", limit, msgs, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAsyncSurvivesWorkerKill submits 1,000 asynchronous calls while one
// of the two worker processes, busy running calls, is SIGKILLed and
// re-forked: every accepted call succeeds, the calls that were running on
// the killed worker run again elsewhere, and duplicate executions (which
// at-least-once allows) are counted.
func TestAsyncSurvivesWorkerKill(t *testing.T) {
	u := startAsyncUp(t, 2, "--async-ack-wait", "2s")
	before := u.ps()
	const total, callers = 1000, 16

	var (
		mu       sync.Mutex
		ids      = map[string]string{} // body -> call id
		rejected []string
		accepted atomic.Int64
		halfway  = make(chan struct{})
		once     sync.Once
	)
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for i := range jobs {
				body := fmt.Sprintf("c%04d", i)
				// 100 ms each: between seeing a call running and the kill landing,
				// it (and those started after it) are still running.
				s, err := submitCall(u.gw, "record?d=100ms", body, nil)
				mu.Lock()
				if err != nil || s.status != http.StatusAccepted {
					rejected = append(rejected, fmt.Sprintf("%s: %d %s %v", body, s.status, s.code, err))
				} else {
					ids[body] = s.id
				}
				mu.Unlock()
				if err == nil && s.status == http.StatusAccepted && accepted.Add(1) == total/2 {
					once.Do(func() { close(halfway) })
				}
			}
		})
	}

	// Halfway through, kill a worker at a moment when the record file
	// shows it running a call.
	type kill struct {
		victim  WorkerStatus
		at      time.Time
		running []string // its calls started and not ended when killed
		err     error
	}
	killed := make(chan kill, 1)
	go func() {
		k := kill{err: errors.New("no accepted half of the calls")}
		defer func() { killed <- k }()
		select {
		case <-halfway:
		case <-time.After(60 * time.Second):
			return
		}
		k.err = errors.New("no worker was seen running a call within 10s")
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			execs, err := parseRecord(u.record)
			if err != nil {
				k.err = err
				return
			}
			for _, w := range before {
				if len(unfinishedBy(execs, w.PID)) == 0 {
					continue
				}
				k.victim, k.at, k.err = w, time.Now(), syscall.Kill(w.PID, syscall.SIGKILL)
				return
			}
		}
	}()
	for i := range total {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	submitted := time.Since(start)
	once.Do(func() { close(halfway) }) // fewer than half accepted: kill now, fail below
	k := <-killed
	if k.err != nil {
		t.Fatalf("kill a worker: %v", k.err)
	}
	for _, r := range rejected {
		t.Errorf("submission not accepted: %s", r)
	}
	// The supervisor re-forks it.
	after := u.waitWorkers(10*time.Second, func(ws []WorkerStatus) bool {
		return allReady(2)(ws) && !slices.ContainsFunc(ws, func(w WorkerStatus) bool { return w.PID == k.victim.PID })
	})
	for _, w := range after {
		if w.Worker == k.victim.Worker && w.Restarts != 1 {
			t.Errorf("worker %d restarts = %d after the kill, want 1", w.Worker, w.Restarts)
		}
	}
	if !strings.Contains(u.p.output(), "signal: killed") {
		t.Error("the supervisor did not log the worker's death (signal: killed)")
	}

	// The victim, reaped, can write no more: what it started and did not
	// end was running when it died.
	execs := readRecord(t, u.record)
	k.running = unfinishedBy(execs, k.victim.PID)
	finishedByVictim := 0
	for _, e := range execs {
		if e.pid == k.victim.PID && e.event == "start" && !slices.Contains(k.running, e.id) {
			finishedByVictim++
		}
	}
	t.Logf("%d calls submitted in %s by %d callers; worker %d (pid %d) SIGKILLed %s after the start, having run %d calls to their end, with %d running",
		len(ids), submitted.Round(time.Millisecond), callers, k.victim.Worker, k.victim.PID, k.at.Sub(start).Round(time.Millisecond), finishedByVictim, len(k.running))
	if finishedByVictim == 0 {
		t.Errorf("the killed worker (pid %d) had run no call: the kill did not hit a worker serving calls", k.victim.PID)
	}

	// Every accepted call succeeds; the queue empties.
	callIDs := make([]string, 0, len(ids))
	for _, id := range ids {
		callIDs = append(callIDs, id)
	}
	recs, lost := waitRecords(t, u.gw, callIDs, 60*time.Second, succeeded)
	waitQueueEmpty(t, adminJS(t, u.nats, u.data), "record", 30*time.Second)
	// Settled and acknowledged: read the records once more, and the
	// record file, which no execution writes to any more.
	recs, lost = waitRecords(t, u.gw, callIDs, 5*time.Second, succeeded)
	execs = readRecord(t, u.record)
	executions, duplicates := tally(execs, ids)
	ends := count(execs, "end")
	for body := range ids {
		if ends[body] == 0 {
			t.Errorf("call %s (%s) never ran to its end", ids[body], body)
		}
	}
	for body := range count(execs, "start") {
		if _, ok := ids[body]; !ok {
			t.Errorf("an execution of %s, which was never accepted", body)
		}
	}
	drained := lastEnd(execs)
	t.Logf("accepted %d, succeeded %d, lost %d; %d executions, %d duplicates; the last call ended %s after the first submission, %s after the kill",
		len(ids), len(ids)-len(lost), len(lost), executions, duplicates, drained.Sub(start).Round(time.Millisecond), drained.Sub(k.at).Round(time.Millisecond))
	if len(ids) != total || len(lost) > 0 {
		t.Errorf("accepted %d of %d; %d not succeeded: %v (first: %v)", len(ids), total, len(lost), byStatus(recs, lost), lost[:min(len(lost), 5)])
	}
	if duplicates < 0 {
		t.Errorf("%d executions for %d calls", executions, len(ids))
	}
	// Why calls ran more than once: they were running on the killed
	// worker, or it had finished them without acknowledging them yet.
	// No call first run elsewhere ran twice.
	running, finished, _ := firstRun(execs, k.at)
	t.Logf("duplicates: %d of calls running when the worker was killed, %d of calls it had finished but not yet acknowledged", running, finished)
	firstPID := map[string]int{}
	for _, e := range execs {
		if _, ok := firstPID[e.id]; !ok {
			firstPID[e.id] = e.pid
		}
	}
	redone := 0
	for body, n := range count(execs, "start") {
		switch {
		case n > 1 && firstPID[body] != k.victim.PID:
			t.Errorf("call %s (%s) ran %d times, first on pid %d, not the killed worker's", ids[body], body, n, firstPID[body])
		case n > 1:
			redone++
		}
	}
	// The worker was killed while its record showed a call running: that
	// call, at least, was not acknowledged yet (its function was running,
	// or the attempt settling), and ran again.
	if redone == 0 {
		t.Errorf("no call of the killed worker ran again: it held no unacknowledged call when killed")
	}
	// What the killed worker was running ran again, on another worker, in
	// a second attempt.
	for _, body := range k.running {
		rec := recs[ids[body]]
		if rec == nil {
			continue // reported above
		}
		if rec.Attempts < 2 || rec.Runner == k.victim.RunnerID {
			t.Errorf("call %s, running on the killed worker: attempts %d, last runner %s (the killed one: %s)", body, rec.Attempts, rec.Runner, k.victim.RunnerID)
		}
	}
}

// TestAsyncDeadLetterAfterMaxDeliver: a call of a function that always
// fails runs exactly max_deliver times, then its record says failed and
// the dead-letter stream holds it.
func TestAsyncDeadLetterAfterMaxDeliver(t *testing.T) {
	const ackWait = 2 * time.Second
	u := startAsyncUp(t, 1, "--async-ack-wait", ackWait.String())
	s, err := submitCall(u.gw, "fail?status=500", "doomed", nil)
	if err != nil || s.status != http.StatusAccepted {
		t.Fatalf("submit: %+v %v", s, err)
	}
	recs, pending := waitRecords(t, u.gw, []string{s.id}, 30*time.Second, func(r *calls.Record) bool { return r.Status == calls.Failed })
	rec := recs[s.id]
	if len(pending) > 0 {
		t.Fatalf("the call did not fail within 30s: %+v", rec)
	}
	failedAt := time.Now()
	if rec.Attempts != 3 || rec.MaxAttempts != 3 || rec.Error == nil || rec.Error.Code != "function_error" || rec.FinishedAt.IsZero() {
		t.Errorf("record = %+v (error %+v), want failed after attempts 3 of 3 with function_error", rec, rec.Error)
	}
	if rec.Response == nil || rec.Response.Status != 500 || string(rec.Response.Body) != "recorded" {
		t.Errorf("record's response = %+v, want the function's 500 answer", rec.Response)
	}

	js := adminJS(t, u.nats, u.data)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	dls, err := calls.DeadLetters(ctx, js, 0)
	if err != nil {
		t.Fatal(err)
	}
	var dl *calls.DeadLetter
	for i := range dls {
		if dls[i].ID == s.id {
			if dl != nil {
				t.Errorf("call %s dead-lettered twice: %+v", s.id, dls)
			}
			dl = &dls[i]
		}
	}
	if dl == nil {
		t.Fatalf("call %s not in the dead-letter stream: %+v", s.id, dls)
	}
	if dl.Function != "fail" || dl.Attempts != 3 || dl.Error == nil || dl.Error.Status != 500 || dl.Size != len("doomed") {
		t.Errorf("dead letter = %+v (error %+v), want function fail, 3 attempts, status 500, the 6-byte body", dl, dl.Error)
	}
	// Nothing is left to run: the call was acknowledged, not left to
	// come back after the ack wait.
	waitQueueEmpty(t, js, "fail", 10*time.Second)
	time.Sleep(time.Until(failedAt.Add(ackWait + 500*time.Millisecond)))
	starts := count(readRecord(t, u.record), "start")["doomed"]
	t.Logf("call %s: %d executions, record %s after %d of %d attempts, dead letter %d: %s %s",
		s.id, starts, rec.Status, rec.Attempts, rec.MaxAttempts, dl.Seq, dl.Error.Code, dl.Error.Message)
	if starts != 3 {
		t.Errorf("the failing function ran %d times, want max_deliver = 3", starts)
	}
}

// TestAsyncIdempotent: the same Idempotency-Key, submitted concurrently
// and again after the call finished, names one call, which runs once.
func TestAsyncIdempotent(t *testing.T) {
	u := startAsyncUp(t, 2)
	key := map[string]string{"Idempotency-Key": "order-42"}
	const n = 5
	subs := make([]submitted, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { subs[i], errs[i] = submitCall(u.gw, "record?d=50ms", "idem", key) })
	}
	wg.Wait()
	// Another key is another call.
	other, err := submitCall(u.gw, "record", "other", map[string]string{"Idempotency-Key": "order-43"})
	if err != nil || other.status != http.StatusAccepted {
		t.Fatalf("submit with another key: %+v %v", other, err)
	}
	id, firsts := subs[0].id, 0
	for i := range n {
		if errs[i] != nil || subs[i].status != http.StatusAccepted || subs[i].id != id {
			t.Errorf("concurrent submission %d: %+v %v, want 202 with id %s", i, subs[i], errs[i], id)
		}
		if !subs[i].duplicate {
			firsts++
		}
	}
	if firsts != 1 {
		t.Errorf("%d of %d concurrent submissions were taken as new calls, want 1", firsts, n)
	}
	if other.id == id {
		t.Errorf("another Idempotency-Key gave the same call id %s", id)
	}
	if _, pending := waitRecords(t, u.gw, []string{id, other.id}, 20*time.Second, succeeded); len(pending) > 0 {
		t.Fatalf("calls not succeeded within 20s: %v", pending)
	}
	// After it finished, a resubmission still names it.
	for i := range n {
		s, err := submitCall(u.gw, "record?d=50ms", "idem", key)
		if err != nil || s.status != http.StatusAccepted || s.id != id || !s.duplicate {
			t.Errorf("resubmission %d after the call finished: %+v %v, want 202 duplicate of %s", i, s, err, id)
		}
	}
	js := adminJS(t, u.nats, u.data)
	waitQueueEmpty(t, js, "record", 10*time.Second)
	c, err := js.Consumer(t.Context(), calls.Stream, "record")
	if err != nil {
		t.Fatal(err)
	}
	execs := count(readRecord(t, u.record), "start")
	t.Logf("%d submissions with one key: call %s, %d execution(s); the consumer delivered %d message(s) in all",
		2*n, id, execs["idem"], c.CachedInfo().Delivered.Consumer)
	if execs["idem"] != 1 || execs["other"] != 1 {
		t.Errorf("executions: idem %d, other %d; want 1 each", execs["idem"], execs["other"])
	}
	if d := c.CachedInfo().Delivered.Consumer; d != 2 {
		t.Errorf("the consumer delivered %d messages, want 2 (one per call)", d)
	}
}

// TestAsyncCallback: a callback receiver that fails twice and then
// answers 200 receives the result three times, once successfully, and
// the record says delivered after 3 attempts. A gateway without
// --callback-allow refuses a loopback callback URL.
func TestAsyncCallback(t *testing.T) {
	type hit struct {
		header http.Header
		body   []byte
		status int
	}
	var mu sync.Mutex
	var hits []hit
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		status := http.StatusOK
		if len(hits) < 2 {
			status = http.StatusInternalServerError
		}
		hits = append(hits, hit{header: r.Header.Clone(), body: b, status: status})
		w.WriteHeader(status)
	}))
	defer recv.Close()

	u := startAsyncUp(t, 1, "--callback-allow", "127.0.0.0/8", "--callback-backoff", "100ms")
	cb := map[string]string{"X-Callback-Url": recv.URL + "/hook?secret=s3cret"}
	s, err := submitCall(u.gw, "record", "cb1", cb)
	if err != nil || s.status != http.StatusAccepted {
		t.Fatalf("submit with a callback: %+v %v", s, err)
	}
	recs, pending := waitRecords(t, u.gw, []string{s.id}, 20*time.Second, func(r *calls.Record) bool {
		return r.Callback != nil && r.Callback.State != calls.CallbackPending
	})
	rec := recs[s.id]
	if len(pending) > 0 {
		t.Fatalf("callback not settled within 20s: %+v", rec)
	}
	// No further delivery comes.
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	got := slices.Clone(hits)
	mu.Unlock()
	t.Logf("callback: %d deliveries %v; record: %+v", len(got), func() (st []int) {
		for _, h := range got {
			st = append(st, h.status)
		}
		return st
	}(), rec.Callback)
	if rec.Status != calls.Succeeded || rec.Callback.State != calls.CallbackDelivered || rec.Callback.Attempts != 3 || rec.Callback.Delivered.IsZero() {
		t.Errorf("record %s, callback %+v; want succeeded, callback delivered after 3 attempts", rec.Status, rec.Callback)
	}
	if strings.Contains(rec.Callback.URL, "s3cret") {
		t.Errorf("the record shows the callback URL's query: %s", rec.Callback.URL)
	}
	if len(got) != 3 {
		t.Fatalf("the receiver got %d deliveries, want 3 (two failed, one delivered)", len(got))
	}
	last := got[2]
	var body calls.Record
	if err := json.Unmarshal(last.body, &body); err != nil {
		t.Fatalf("callback body: %v: %s", err, last.body)
	}
	if body.ID != s.id || body.Status != calls.Succeeded || body.Response == nil || string(body.Response.Body) != "recorded" || body.Callback != nil {
		t.Errorf("callback body = %s", last.body)
	}
	if last.header.Get("X-Call-Id") != s.id || last.header.Get("X-Call-Status") != "succeeded" || last.header.Get("X-Shoal-Function") != "record" {
		t.Errorf("callback headers = %v", last.header)
	}
	if n := count(readRecord(t, u.record), "start")["cb1"]; n != 1 {
		t.Errorf("the function ran %d times for one call; callback retries must not run it again", n)
	}

	// A gateway on the same NATS without --callback-allow admits public
	// addresses only.
	g := startShoalEnv(t, []string{testFunctions + "=1"}, "gateway", "-f", filepath.Join(u.dir, "fn.yaml"), "--http", "127.0.0.1:0",
		"--nats", u.nats, "--nats-nkey", filepath.Join(credentialsPath(u.data), "gateway.nk"))
	strict := g.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	refused, err := submitCall(strict, "record", "cb2", map[string]string{"X-Callback-Url": recv.URL + "/"})
	if err != nil || refused.status != http.StatusBadRequest {
		t.Errorf("a loopback callback URL without --callback-allow: %+v %v, want 400", refused, err)
	}
	if ok, err := submitCall(strict, "record", "cb3", nil); err != nil || ok.status != http.StatusAccepted {
		t.Errorf("the same gateway, without a callback: %+v %v, want 202", ok, err)
	}
}

// TestAsyncQueueFull: with room for 20 waiting calls and none able to
// run, the 21st submission is refused at once with 429 queue_full and
// Retry-After; once the calls can run, every accepted one succeeds.
func TestAsyncQueueFull(t *testing.T) {
	const maxQueued = 20
	u := startAsyncUp(t, 1, "--async-max-queued", strconv.Itoa(maxQueued))
	gate := filepath.Join(u.dir, "gate")
	path := "gated?gate=" + gate
	var ids []string
	var full submitted
	for i := range 5 * maxQueued { // bounded
		s, err := submitCall(u.gw, path, fmt.Sprintf("q%03d", i), nil)
		if err != nil {
			t.Fatalf("submission %d: %v", i, err)
		}
		if s.status == http.StatusAccepted {
			ids = append(ids, s.id)
			continue
		}
		full = s
		break
	}
	t.Logf("accepted %d calls; then %d %s in %s, Retry-After %q", len(ids), full.status, full.code, full.took.Round(time.Microsecond), full.retryAfter)
	if full.status != http.StatusTooManyRequests || full.code != string(invocation.CodeQueueFull) {
		t.Fatalf("after %d accepted calls: %d %q, want 429 queue_full", len(ids), full.status, full.code)
	}
	if len(ids) != maxQueued {
		t.Errorf("accepted %d calls before the queue was full, want --async-max-queued %d", len(ids), maxQueued)
	}
	if ra, err := strconv.Atoi(full.retryAfter); err != nil || ra < 1 {
		t.Errorf("Retry-After %q, want a positive number of seconds", full.retryAfter)
	}
	if full.took > time.Second {
		t.Errorf("the refusal took %s, want it at once", full.took)
	}
	// Refused again while full, and as fast.
	if s, err := submitCall(u.gw, path, "again", nil); err != nil || s.status != http.StatusTooManyRequests || s.took > time.Second {
		t.Errorf("another submission while full: %+v %v", s, err)
	}
	// Nothing runs but the first call, which waits at the gate.
	if starts := count(readRecord(t, u.record), "start"); len(starts) > 1 {
		t.Errorf("%d calls started while the gate was closed, want at most 1", len(starts))
	}

	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	opened := time.Now()
	recs, lost := waitRecords(t, u.gw, ids, 30*time.Second, succeeded)
	if len(lost) > 0 {
		t.Fatalf("%d of %d accepted calls did not succeed: %v", len(lost), len(ids), byStatus(recs, lost))
	}
	waitQueueEmpty(t, adminJS(t, u.nats, u.data), "gated", 10*time.Second)
	execs := readRecord(t, u.record)
	starts := count(execs, "start")
	executions := 0
	for _, n := range starts {
		executions += n
	}
	t.Logf("all %d accepted calls succeeded %s after the gate opened; %d executions, %d duplicates",
		len(ids), time.Since(opened).Round(time.Millisecond), executions, executions-len(ids))
	if len(starts) != len(ids) {
		t.Errorf("%d distinct calls ran, want %d", len(starts), len(ids))
	}
	// The queue has room again.
	if s, err := submitCall(u.gw, path, "after", nil); err != nil || s.status != http.StatusAccepted {
		t.Errorf("a submission once the queue drained: %+v %v, want 202", s, err)
	}
}

// TestAsyncSurvivesNATSKill runs `shoal nats` (JetStream, sync always),
// a `shoal gateway` and a `shoal runner` as separate processes, queues
// 200 calls, SIGKILLs the NATS server while most of them wait, and
// restarts it on the same port and store: every accepted call succeeds.
func TestAsyncSurvivesNATSKill(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	record := filepath.Join(dir, "record")
	env := []string{testFunctions + "=1", recordEnv + "=" + record}
	if _, errOut, code := runShoal(t, dir, "init", "--data", data); code != 0 {
		t.Fatalf("shoal init: %s", errOut)
	}
	creds, err := broker.LoadCredentials(credentialsPath(data))
	if err != nil {
		t.Fatal(err)
	}
	addr, store := "127.0.0.1:"+proctest.FreePort(t), filepath.Join(dir, "nats")
	url := "nats://" + addr
	startNATS := func() *proc {
		p := startShoal(t, "nats", "--listen", addr, "--data", store, "--credentials", credentialsPath(data), "--name", "n1", "--drain-timeout", "1s")
		p.waitLog(`msg="nats listening" .*sync=always`)
		noDataRace(t, p)
		return p
	}
	natsProc := startNATS()
	admin := []string{"--data", data, "--nats", url}
	if _, errOut, code := runShoal(t, dir, append([]string{"key", "publish"}, admin...)...); code != 0 {
		t.Fatalf("shoal key publish: %s", errOut)
	}
	fn := writeFile(t, dir, "fn.yaml", `version: 1
functions:
  record: {handler: {builtin: record}, public: true, timeout: 30s, concurrency: 4}
`)
	if _, errOut, code := runShoalEnv(t, dir, env, append([]string{"deploy", "-f", fn}, admin...)...); code != 0 {
		t.Fatalf("shoal deploy: %s", errOut)
	}
	r := startShoalEnv(t, env, "runner", "--nats", url, "--nats-nkey", creds.SeedFile(broker.RoleRunner), "--async-ack-wait", "2s", "--drain-timeout", "5s")
	r.waitLog(`msg="runner serving"`)
	g := startShoalEnv(t, env, "gateway", "--nats", url, "--nats-nkey", creds.SeedFile(broker.RoleGateway), "--http", "127.0.0.1:0", "--drain-timeout", "5s")
	gw := g.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	noDataRace(t, r)
	noDataRace(t, g)

	const total = 200
	ids := map[string]string{} // body -> call id
	var mu sync.Mutex
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range 8 {
		wg.Go(func() {
			for i := range jobs {
				body := fmt.Sprintf("n%03d", i)
				s, err := submitCall(gw, "record?d=40ms", body, nil)
				if err != nil || s.status != http.StatusAccepted {
					t.Errorf("submission %s before the kill: %+v %v", body, s, err)
					continue
				}
				mu.Lock()
				ids[body] = s.id
				mu.Unlock()
			}
		})
	}
	for i := range total {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	t.Logf("%d calls accepted in %s", len(ids), time.Since(start).Round(time.Millisecond))

	// Kill NATS once some calls are done, with most still queued.
	for deadline := time.Now().Add(20 * time.Second); len(count(readRecord(t, record), "end")) < 10; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("fewer than 10 calls ran within 20s")
		}
	}
	if err := natsProc.stop(syscall.SIGKILL); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("shoal nats after SIGKILL: %v", err)
	}
	killed := time.Now()
	doneAtKill := len(count(readRecord(t, record), "end"))
	t.Logf("NATS SIGKILLed %s after the first submission: %d calls had run, %d had not", killed.Sub(start).Round(time.Millisecond), doneAtKill, len(ids)-doneAtKill)
	if doneAtKill >= len(ids) {
		t.Fatal("every call had run before the kill: nothing was queued")
	}
	// While NATS is away, the gateway refuses at once and queues nothing.
	g.waitLog(`msg="nats disconnected"`)
	if s, err := submitCall(gw, "record", "away", nil); err != nil || s.status != http.StatusServiceUnavailable {
		t.Errorf("a submission while NATS is down: %+v %v, want 503", s, err)
	}
	time.Sleep(500 * time.Millisecond)
	startNATS()
	t.Logf("NATS restarted %s after the kill", time.Since(killed).Round(time.Millisecond))

	callIDs := make([]string, 0, len(ids))
	for _, id := range ids {
		callIDs = append(callIDs, id)
	}
	recs, lost := waitRecords(t, gw, callIDs, 60*time.Second, succeeded)
	js, err := jetstream.New(connectAs(t, url, creds.SeedFile(broker.RoleAdmin)))
	if err != nil {
		t.Fatal(err)
	}
	waitQueueEmpty(t, js, "record", 30*time.Second)
	recs, lost = waitRecords(t, gw, callIDs, 5*time.Second, succeeded)
	execs := readRecord(t, record)
	executions, duplicates := tally(execs, ids)
	ends := count(execs, "end")
	completed := 0
	for body, id := range ids {
		if recs[id] != nil && recs[id].Status == calls.Succeeded && ends[body] > 0 {
			completed++
		}
	}
	running, finished, other := firstRun(execs, killed)
	t.Logf("accepted %d, completed %d, lost %d; %d executions, %d duplicates (%d of calls running at the kill, %d of calls finished before it, %d others %v); the last call ended %s after the kill",
		len(ids), completed, len(lost), executions, duplicates, running, finished, len(other), other, lastEnd(execs).Sub(killed).Round(time.Millisecond))
	if len(ids) != total || len(lost) > 0 || completed != len(ids) {
		t.Errorf("accepted %d of %d, completed %d; not succeeded: %d %v (first: %v)", len(ids), total, completed, len(lost), byStatus(recs, lost), lost[:min(len(lost), 5)])
	}
	if duplicates < 0 {
		t.Errorf("%d executions for %d calls", executions, len(ids))
	}
	if count(execs, "start")["away"] > 0 {
		t.Error("the call refused while NATS was down ran")
	}
}

// TestDeployKeepsAsyncLimits: `shoal deploy` applies the asynchronous
// limits given on its command line and keeps the others as they were set
// up, instead of resetting them to the defaults at every deploy.
func TestDeployKeepsAsyncLimits(t *testing.T) {
	u := startAsyncUp(t, 1, "--async-max-queued", "777", "--async-results-ttl", "2h")
	js := adminJS(t, u.nats, u.data)
	fn := filepath.Join(u.dir, "fn.yaml")
	deploy := func(args ...string) {
		t.Helper()
		args = append([]string{"deploy", "-f", fn, "--data", u.data, "--nats", u.nats}, args...)
		if out, errOut, code := runShoalEnv(t, u.dir, []string{testFunctions + "=1"}, args...); code != 0 {
			t.Fatalf("shoal %s = %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
	}
	current := func() calls.Limits {
		t.Helper()
		l, ok, err := calls.CurrentLimits(t.Context(), js)
		if err != nil || !ok {
			t.Fatalf("CurrentLimits = %v, %v", ok, err)
		}
		return l
	}
	deploy()
	if l := current(); l.MaxQueued != 777 || l.ResultsTTL != 2*time.Hour {
		t.Errorf("after a plain deploy: max queued %d, results TTL %s; want up's 777 and 2h kept", l.MaxQueued, l.ResultsTTL)
	}
	deploy("--async-max-queued", "888")
	if l := current(); l.MaxQueued != 888 || l.ResultsTTL != 2*time.Hour {
		t.Errorf("after deploy --async-max-queued 888: max queued %d, results TTL %s; want 888 and 2h", l.MaxQueued, l.ResultsTTL)
	}
}
