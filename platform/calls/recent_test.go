package calls_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/calls"
)

// bucket opens the records' bucket.
func (e *env) bucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	kv, err := e.js.KeyValue(e.ctx, calls.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// put writes rec into the bucket, as a runner does when a call changes.
func (e *env) put(t *testing.T, rec *calls.Record) {
	t.Helper()
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.bucket(t).Put(e.ctx, rec.ID, data); err != nil {
		t.Fatal(err)
	}
}

// recentIDs is the ids of Recent's records, in order.
func (e *env) recentIDs(t *testing.T, limit int, function string) []string {
	t.Helper()
	l, err := e.q.Recent(e.ctx, limit, function)
	if err != nil {
		t.Fatalf("Recent(%d, %q): %v", limit, function, err)
	}
	if l.Truncated || l.Skipped != 0 {
		t.Errorf("Recent(%d, %q): truncated %v, %d skipped; want neither", limit, function, l.Truncated, l.Skipped)
	}
	ids := []string{}
	for _, r := range l.Records {
		ids = append(ids, r.ID)
	}
	return ids
}

// TestRecent: the newest revision of each call, newest change first,
// without deleted or purged calls, by function, at most limit.
func TestRecent(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	kv := e.bucket(t)
	a, b, c := e.submit(t, "f", "a").Record, e.submit(t, "f", "b").ID, e.submit(t, "f", "c").ID
	d, gone := e.submit(t, "g", "d").ID, e.submit(t, "g", "gone").ID
	a.Status, a.Attempts = calls.Running, 1
	e.put(t, a)
	if err := kv.Delete(e.ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(e.ctx, gone); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		limit    int
		function string
		want     []string
	}{
		{"every function, newest change first", calls.MaxRecent, "", []string{a.ID, d, b}},
		{"at most limit", 2, "", []string{a.ID, d}},
		{"one function", 10, "f", []string{a.ID, b}},
		{"the other function", 10, "g", []string{d}},
		{"at most limit of one function", 1, "f", []string{a.ID}},
		{"a function without calls", 10, "nope", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := e.recentIDs(t, tt.limit, tt.function); !slices.Equal(got, tt.want) {
				t.Errorf("Recent(%d, %q) = %v, want %v", tt.limit, tt.function, got, tt.want)
			}
		})
	}
	t.Run("the newest revision", func(t *testing.T) {
		l, err := e.q.Recent(e.ctx, 1, "")
		recs := l.Records
		if err != nil || len(recs) != 1 || recs[0].Status != calls.Running || recs[0].Attempts != 1 || recs[0].Function != "f" {
			t.Errorf("Recent(1) = %+v, %v; want call a running", recs, err)
		}
	})
}

// TestRecentWorker: calls a runner settled, each written three times,
// are listed once each, as last written, in the order of their last
// change.
func TestRecentWorker(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	startWorker(t, e.s, "f", manifest.Async{}, 0, ok)
	var fs, gs []string
	for i := range 5 {
		fs = append(fs, e.submit(t, "f", "").ID)
		if i%2 == 0 {
			gs = append(gs, e.submit(t, "g", "").ID) // no runner: stays queued
		}
	}
	for _, id := range fs {
		e.waitStatus(t, id, calls.Succeeded)
	}
	kv := e.bucket(t)
	l, err := e.q.Recent(e.ctx, 50, "")
	if err != nil {
		t.Fatal(err)
	}
	recs := l.Records
	var ids []string
	var last uint64
	for i, r := range recs {
		ids = append(ids, r.ID)
		want := calls.Queued
		if r.Function == "f" {
			want = calls.Succeeded
		}
		if r.Status != want {
			t.Errorf("call %s of %s is %s, want %s", r.ID, r.Function, r.Status, want)
		}
		en, err := kv.Get(e.ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && en.Revision() >= last {
			t.Errorf("record %d (%s) is revision %d, after revision %d: want newest change first", i, r.ID, en.Revision(), last)
		}
		last = en.Revision()
	}
	slices.Sort(ids)
	all := slices.Sorted(slices.Values(append(slices.Clone(fs), gs...)))
	if !slices.Equal(ids, all) {
		t.Errorf("Recent listed %v, want each of the %d calls once: %v", ids, len(all), all)
	}
	if l, err := e.q.Recent(e.ctx, 50, "f"); err != nil || len(l.Records) != len(fs) {
		t.Errorf("Recent of f = %d records, %v; want %d", len(l.Records), err, len(fs))
	}
}

// TestRecentExpired: the records the bucket's TTL removed are not
// listed.
func TestRecentExpired(t *testing.T) {
	l := calls.DefaultLimits()
	l.ResultsTTL = time.Second
	e := setup(t, l)
	old := e.submit(t, "f", "old").ID
	waitFor(t, "the record to expire", func() bool {
		_, err := e.q.Get(e.ctx, old)
		return isNotFound(err)
	})
	if got := e.recentIDs(t, 10, ""); len(got) != 0 {
		t.Errorf("Recent of an expired bucket = %v, want none", got)
	}
	fresh := e.submit(t, "f", "fresh").ID
	if got := e.recentIDs(t, 10, ""); !slices.Equal(got, []string{fresh}) {
		t.Errorf("Recent = %v, want only %s (%s expired)", got, fresh, old)
	}
}

// TestRecentBound: Recent reads no more than 20×limit sequences back.
func TestRecentBound(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	rare := e.submit(t, "rare", "").ID
	for range 19 {
		e.submit(t, "f", "")
	}
	if got := e.recentIDs(t, 1, "rare"); !slices.Equal(got, []string{rare}) {
		t.Errorf("20 sequences back: Recent(1, rare) = %v, want %s", got, rare)
	}
	e.submit(t, "f", "")
	if got := e.recentIDs(t, 1, "rare"); len(got) != 0 {
		t.Errorf("21 sequences back: Recent(1, rare) = %v, want none (past the bound)", got)
	}
	if got := e.recentIDs(t, 2, "rare"); !slices.Equal(got, []string{rare}) {
		t.Errorf("21 sequences back: Recent(2, rare) = %v, want %s", got, rare)
	}
}

func TestRecentErrors(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	e.submit(t, "f", "")
	lists := []struct {
		name string
		list func(ctx context.Context, limit int) error
	}{
		{"Recent", func(ctx context.Context, limit int) error {
			_, err := e.q.Recent(ctx, limit, "")
			return err
		}},
		{"RecentDeadLetters", func(ctx context.Context, limit int) error {
			_, err := calls.RecentDeadLetters(ctx, e.js, limit)
			return err
		}},
	}
	tests := []struct {
		name  string
		limit int
		ctx   func() context.Context
		want  error // nil: no error
	}{
		{"limit 1", 1, nil, nil},
		{"limit MaxRecent", calls.MaxRecent, nil, nil},
		{"limit 0", 0, nil, calls.ErrBadLimit},
		{"negative limit", -1, nil, calls.ErrBadLimit},
		{"limit over MaxRecent", calls.MaxRecent + 1, nil, calls.ErrBadLimit},
		{"context ended", 10, func() context.Context {
			ctx, cancel := context.WithCancel(e.ctx)
			cancel()
			return ctx
		}, context.Canceled},
	}
	for _, l := range lists {
		for _, tt := range tests {
			t.Run(l.name+"/"+tt.name, func(t *testing.T) {
				ctx := e.ctx
				if tt.ctx != nil {
					ctx = tt.ctx()
				}
				err := l.list(ctx, tt.limit)
				if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
					t.Errorf("%s(limit %d) = %v, want %v", l.name, tt.limit, err, tt.want)
				}
			})
		}
	}
}

// TestRecentDeadLetters: the dead letters newest first, as DeadLetters
// lists them backwards, without those discarded.
func TestRecentDeadLetters(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	startWorker(t, e.s, "f", manifest.Async{MaxDeliver: 1}, 0, func(*calls.Call) calls.Result { return calls.Result{Status: 400} })
	if dls, err := calls.RecentDeadLetters(e.ctx, e.js, 10); err != nil || len(dls) != 0 {
		t.Errorf("RecentDeadLetters of none = %+v, %v", dls, err)
	}
	var ids []string
	for range 4 {
		id := e.submit(t, "f", "").ID
		e.waitStatus(t, id, calls.Failed)
		waitFor(t, "the dead letter", func() bool { _, found := e.deadLetter(t, id); return found })
		ids = append(ids, id)
	}
	if _, err := calls.Discard(e.ctx, e.js, ids[1]); err != nil {
		t.Fatal(err)
	}
	all, err := calls.DeadLetters(e.ctx, e.js, 0)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(all)
	tests := []struct {
		name  string
		limit int
		want  []string
	}{
		{"all", 10, []string{ids[3], ids[2], ids[0]}},
		{"at most limit", 2, []string{ids[3], ids[2]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dls, err := calls.RecentDeadLetters(e.ctx, e.js, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range dls {
				got = append(got, d.ID)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("RecentDeadLetters(%d) = %v, want %v", tt.limit, got, tt.want)
			}
			if !slices.EqualFunc(dls, all[:len(dls)], func(a, b calls.DeadLetter) bool {
				return a.Seq == b.Seq && a.Function == b.Function && a.Attempts == b.Attempts && a.FailedAt.Equal(b.FailedAt) &&
					a.Error != nil && b.Error != nil && *a.Error == *b.Error
			}) {
				t.Errorf("RecentDeadLetters(%d) = %+v, want DeadLetters backwards: %+v", tt.limit, dls, all)
			}
		})
	}
}

// TestRecentHistory: in a bucket that keeps older revisions, Recent
// still lists each call once, as last written, and none deleted.
func TestRecentHistory(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	s, err := e.js.Stream(e.ctx, "KV_"+calls.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgsPerSubject = 5
	if _, err := e.js.UpdateStream(e.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	a := e.submit(t, "f", "a").Record
	b := e.submit(t, "f", "b").ID
	for _, st := range []calls.Status{calls.Running, calls.Succeeded} {
		a.Status = st
		e.put(t, a)
	}
	if err := e.bucket(t).Delete(e.ctx, b); err != nil {
		t.Fatal(err)
	}
	l, err := e.q.Recent(e.ctx, 10, "")
	recs := l.Records
	if err != nil || len(recs) != 1 || recs[0].ID != a.ID || recs[0].Status != calls.Succeeded {
		t.Errorf("Recent = %+v, %v; want only call a, succeeded", recs, err)
	}
}

// inBytes is how many bytes nc has received so far.
func inBytes(nc *nats.Conn) uint64 { return nc.Stats().InBytes }

// TestRecentLargeRecords: records holding answers of 1 MiB are listed
// whole, but only those wanted are read, and no more bytes than the
// budget, past which the listing says it is truncated.
func TestRecentLargeRecords(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	// Decoding MiBs of base64 takes seconds under the race detector.
	var cancel context.CancelFunc
	e.ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const body = 1 << 20
	var ids []string // newest first
	var size int     // of a record
	for i := range 12 {
		rec := &calls.Record{ID: calls.NewID(), Function: []string{"f", "g"}[i%2], Status: calls.Succeeded,
			Response: &calls.Response{Status: 200, Body: bytes.Repeat([]byte{'x'}, body)}}
		e.put(t, rec)
		ids = append([]string{rec.ID}, ids...)
		data, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		size = len(data)
	}
	every := func(from, step, n int) []string {
		var out []string
		for i := from; len(out) < n; i += step {
			out = append(out, ids[i])
		}
		return out
	}
	tests := []struct {
		name      string
		limit     int
		function  string
		budget    int // 0: the default, 64 MiB
		want      []string
		truncated bool
		// read is the most records read whole.
		read int
	}{
		{"all", 20, "", 0, ids, false, 12},
		{"the newest only: no more read than wanted", 3, "", 0, ids[:3], false, 3},
		{"one function: the others' read too", 3, "g", 0, every(0, 2, 3), false, 8},
		{"past the budget: truncated", 20, "", 5 * size, ids[:5], true, 5},
		{"one function past the budget: truncated", 10, "f", 4 * size, every(1, 2, 2), true, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js := newJS(t, e.s)
			q := calls.NewQueue(js)
			if tt.budget > 0 {
				calls.SetRecentBudget(q, tt.budget)
			}
			before := inBytes(js.Conn())
			l, err := q.Recent(e.ctx, tt.limit, tt.function)
			read := inBytes(js.Conn()) - before
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range l.Records {
				got = append(got, r.ID)
				if r.Response == nil || len(r.Response.Body) != body {
					t.Errorf("call %s: response %+v, want its body of %d bytes", r.ID, r.Response != nil, body)
				}
			}
			if !slices.Equal(got, tt.want) || l.Truncated != tt.truncated || l.Skipped != 0 {
				t.Errorf("Recent(%d, %q) = %v, truncated %v, %d skipped; want %v, truncated %v", tt.limit, tt.function, got, l.Truncated, l.Skipped, tt.want, tt.truncated)
			}
			// The headers of the 12 messages are a few KiB.
			if most := uint64(tt.read*size + 64<<10); read > most {
				t.Errorf("Recent(%d, %q) read %d bytes, want at most %d: %d records of %d bytes and their headers", tt.limit, tt.function, read, most, tt.read, size)
			}
		})
	}
}

// TestRecentDeadLettersLarge: listing dead letters of 1 MiB requests
// reads their headers only, and says the size of each body.
func TestRecentDeadLettersLarge(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	startWorker(t, e.s, "f", manifest.Async{MaxDeliver: 1}, 0, func(*calls.Call) calls.Result { return calls.Result{Status: 400} })
	const body = 1 << 20
	for range 20 {
		e.submit(t, "f", strings.Repeat("x", body))
	}
	waitFor(t, "20 dead letters", func() bool { return e.streamMsgs(t, calls.DLQStream) == 20 })
	lists := []struct {
		name string
		list func(js jetstream.JetStream) ([]calls.DeadLetter, error)
		want int
	}{
		{"RecentDeadLetters", func(js jetstream.JetStream) ([]calls.DeadLetter, error) {
			return calls.RecentDeadLetters(e.ctx, js, 10)
		}, 10},
		{"DeadLetters", func(js jetstream.JetStream) ([]calls.DeadLetter, error) { return calls.DeadLetters(e.ctx, js, 0) }, 20},
	}
	for _, l := range lists {
		t.Run(l.name, func(t *testing.T) {
			js := newJS(t, e.s)
			before := inBytes(js.Conn())
			dls, err := l.list(js)
			read := inBytes(js.Conn()) - before
			if err != nil {
				t.Fatal(err)
			}
			if len(dls) != l.want {
				t.Errorf("%s listed %d dead letters, want %d", l.name, len(dls), l.want)
			}
			for _, d := range dls {
				if d.Size != body || d.BodyDropped || d.Function != "f" || d.Attempts != 1 || d.Error == nil || d.Error.Status != 400 {
					t.Errorf("dead letter %+v, want one of f's, failed with 400, its body of %d bytes kept", d, body)
				}
			}
			if read > 256<<10 {
				t.Errorf("%s read %d bytes, want the headers only: under 256 KiB", l.name, read)
			}
		})
	}
}

// TestRecentSkipsUndecodable: a record that does not decode is left out
// and counted, and the listing goes on.
func TestRecentSkipsUndecodable(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	a := e.submit(t, "f", "a").ID
	if _, err := e.bucket(t).Put(e.ctx, "garbage", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	b := e.submit(t, "f", "b").ID
	for _, function := range []string{"", "f"} {
		l, err := e.q.Recent(e.ctx, 10, function)
		var got []string
		for _, r := range l.Records {
			got = append(got, r.ID)
		}
		if err != nil || !slices.Equal(got, []string{b, a}) || l.Skipped != 1 || l.Truncated {
			t.Errorf("Recent(10, %q) = %v, %d skipped, truncated %v, %v; want [%s %s], 1 skipped", function, got, l.Skipped, l.Truncated, err, b, a)
		}
	}
}

// TestRecentLeavesNoConsumers: the consumers the listings read with are
// deleted when they are done, not left to the server's clean-up of
// idle ones, as a console polls.
func TestRecentLeavesNoConsumers(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	startWorker(t, e.s, "f", manifest.Async{MaxDeliver: 1}, 0, func(*calls.Call) calls.Result { return calls.Result{Status: 400} })
	for range 3 {
		e.submit(t, "f", "")
	}
	waitFor(t, "3 dead letters", func() bool { return e.streamMsgs(t, calls.DLQStream) == 3 })
	for range 10 {
		if _, err := e.q.Recent(e.ctx, 10, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := e.q.Recent(e.ctx, 1, "nope"); err != nil {
			t.Fatal(err)
		}
		if _, err := calls.RecentDeadLetters(e.ctx, e.js, 10); err != nil {
			t.Fatal(err)
		}
		if _, err := calls.DeadLetters(e.ctx, e.js, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"KV_" + calls.Bucket, calls.DLQStream} {
		s, err := e.js.Stream(e.ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			info, err := s.Info(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n = info.State.Consumers; n == 0 || time.Now().After(deadline) {
				break
			}
		}
		if n != 0 {
			t.Errorf("stream %s has %d consumers 2 s after 40 listings, want none", name, n)
		}
	}
}
