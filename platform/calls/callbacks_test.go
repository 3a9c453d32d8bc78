package calls_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/callback"
	"github.com/shoal-dev/shoal/platform/calls"
)

// receiver is a callback endpoint answering a status per delivery.
type receiver struct {
	mu     sync.Mutex
	got    []delivery
	answer func(n int) int // status for delivery n, from 1
}

type delivery struct {
	header http.Header
	body   []byte
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.got = append(rc.got, delivery{r.Header.Clone(), body})
	n := len(rc.got)
	rc.mu.Unlock()
	w.WriteHeader(rc.answer(n))
}

func (rc *receiver) deliveries() []delivery {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]delivery(nil), rc.got...)
}

func TestCallbacks(t *testing.T) {
	loopback, err := callback.ParsePolicy([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		cfg      calls.CallbackConfig
		answer   func(n int) int
		state    string
		attempts int // callback attempts recorded
		received int // deliveries the receiver saw
		lastErr  string
	}{{
		name:     "delivered at the third attempt after two 500s",
		cfg:      calls.CallbackConfig{Policy: loopback, Backoff: []time.Duration{50 * time.Millisecond}},
		answer:   func(n int) int { return map[bool]int{true: 500, false: 200}[n <= 2] },
		state:    calls.CallbackDelivered,
		attempts: 3, received: 3,
	}, {
		name:     "failed after its attempts",
		cfg:      calls.CallbackConfig{Policy: loopback, Attempts: 2, Backoff: []time.Duration{0}},
		answer:   func(int) int { return 503 },
		state:    calls.CallbackFailed,
		attempts: 2, received: 2, lastErr: "503",
	}, {
		name:     "a 4xx answer is not retried",
		cfg:      calls.CallbackConfig{Policy: loopback, Backoff: []time.Duration{0}},
		answer:   func(int) int { return 410 },
		state:    calls.CallbackFailed,
		attempts: 1, received: 1, lastErr: "410",
	}, {
		name:     "the default policy refuses a loopback address",
		cfg:      calls.CallbackConfig{Backoff: []time.Duration{0}},
		answer:   func(int) int { return 200 },
		state:    calls.CallbackFailed,
		attempts: 1, received: 0, lastErr: "not allowed",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, calls.DefaultLimits())
			rc := &receiver{answer: tt.answer}
			srv := httptest.NewServer(rc)
			t.Cleanup(srv.Close)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				calls.DeliverCallbacks(ctx, newJS(t, e.s), tt.cfg)
			}()
			t.Cleanup(func() { cancel(); <-done })
			startWorker(t, e.s, "f", manifest.Async{}, 0, ok)

			url := srv.URL + "/hook?token=secret"
			sub := e.submit(t, "f", "x", func(s *calls.Submission) { s.Callback = url })
			var rec *calls.Record
			waitFor(t, "the callback to settle", func() bool {
				var err error
				rec, err = e.q.Get(e.ctx, sub.ID)
				return err == nil && rec.Callback != nil && rec.Callback.State != calls.CallbackPending
			})
			cb := rec.Callback
			if rec.Status != calls.Succeeded || cb.State != tt.state || cb.Attempts != tt.attempts || cb.URL != srv.URL+"/hook" {
				t.Errorf("record %s, callback %+v; want %s after %d attempts, URL without its query", rec.Status, cb, tt.state, tt.attempts)
			}
			if tt.state == calls.CallbackDelivered && (cb.Delivered.IsZero() || cb.LastError != "") {
				t.Errorf("delivered callback %+v", cb)
			}
			if tt.state == calls.CallbackFailed && !strings.Contains(cb.LastError, tt.lastErr) {
				t.Errorf("last error %q, want it to name %q", cb.LastError, tt.lastErr)
			}
			got := rc.deliveries()
			if len(got) != tt.received {
				t.Fatalf("receiver saw %d deliveries, want %d", len(got), tt.received)
			}
			for _, d := range got {
				if d.header.Get("X-Call-Id") != sub.ID || d.header.Get("X-Call-Status") != "succeeded" || d.header.Get("X-Shoal-Function") != "f" ||
					d.header.Get("Content-Type") != "application/json" || d.header.Get("User-Agent") != callback.UserAgent {
					t.Errorf("delivery headers %v", d.header)
				}
				var sent calls.Record
				if err := json.Unmarshal(d.body, &sent); err != nil {
					t.Fatalf("delivery body %q: %v", d.body, err)
				}
				if sent.ID != sub.ID || sent.Status != calls.Succeeded || sent.Response == nil || string(sent.Response.Body) != "done" || sent.Callback != nil {
					t.Errorf("delivered record %s, want the call's record without its callback", d.body)
				}
			}
			waitFor(t, "the callback stream to empty", func() bool { return e.streamMsgs(t, calls.CallbackStream) == 0 })
		})
	}
}
