package auth_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/functions/auth"
)

func newLimiter(t *testing.T, js jetstream.JetStream, limits auth.Limits) *auth.Limiter {
	t.Helper()
	l, err := auth.CreateLimiter(testContext(t), js, limits, 1)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// storedCounter reads a counter as stored in the bucket; ok is false
// when there is none.
func storedCounter(t *testing.T, js jetstream.JetStream, key string) (count int, since time.Time, ok bool) {
	t.Helper()
	ctx := testContext(t)
	kv, err := js.KeyValue(ctx, auth.FailuresBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, time.Time{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Count int       `json:"count"`
		Since time.Time `json:"since"`
	}
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		t.Fatalf("counter %s = %s: %v", key, e.Value(), err)
	}
	return c.Count, c.Since, true
}

func mustCheck(t *testing.T, l *auth.Limiter, user, addr string) time.Duration {
	t.Helper()
	wait, err := l.Check(testContext(t), user, addr)
	if err != nil {
		t.Fatal(err)
	}
	return wait
}

func mustFail(t *testing.T, l *auth.Limiter, user, addr string) {
	t.Helper()
	if err := l.Failed(testContext(t), user, addr); err != nil {
		t.Fatal(err)
	}
}

func TestLimiterPerUser(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 3, PerAddr: 100, Window: time.Minute})
	for i := range 3 {
		if wait := mustCheck(t, l, "alice", "192.0.2.1"); wait != 0 {
			t.Fatalf("after %d failures: wait %v, want 0", i, wait)
		}
		mustFail(t, l, "alice", fmt.Sprintf("192.0.2.%d", i+1)) // from changing addresses
	}
	wait := mustCheck(t, l, "alice", "198.51.100.1") // from an address never seen
	if wait <= 55*time.Second || wait > time.Minute {
		t.Errorf("after 3 failures: wait %v, want about the window's remaining minute", wait)
	}
	if wait := mustCheck(t, l, "bob", "192.0.2.1"); wait != 0 {
		t.Errorf("another user: wait %v, want 0", wait)
	}
	if n, _, _ := storedCounter(t, js, auth.UserKey("alice")); n != 3 {
		t.Errorf("stored count = %d, want 3", n)
	}
}

func TestLimiterPerAddress(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 100, PerAddr: 3, Window: time.Minute})
	for _, user := range []string{"alice", "bob", "carol"} {
		mustFail(t, l, user, "192.0.2.1")
	}
	if wait := mustCheck(t, l, "dave", "192.0.2.1"); wait <= 55*time.Second || wait > time.Minute {
		t.Errorf("a fourth username from the address: wait %v, want about a minute", wait)
	}
	if wait := mustCheck(t, l, "dave", "192.0.2.2"); wait != 0 {
		t.Errorf("another address: wait %v, want 0", wait)
	}
}

func TestLimiterWindowRestarts(t *testing.T) {
	t.Parallel()
	const window = time.Second
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 2, PerAddr: 100, Window: window})
	start := time.Now()
	mustFail(t, l, "alice", "nats")
	time.Sleep(window / 2)
	mustFail(t, l, "alice", "nats") // keeps the counter stored till 1.5 windows
	wait := mustCheck(t, l, "alice", "nats")
	if wait <= 0 || wait > window-time.Since(start)+50*time.Millisecond {
		t.Fatalf("after 2 failures: wait %v, want what is left of the window that began %v ago", wait, time.Since(start))
	}
	time.Sleep(wait)
	deadline := time.Now().Add(window)
	for mustCheck(t, l, "alice", "nats") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("still limited a window after the first failure")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The counter of the old window is still stored; the next failure
	// starts a new window rather than adding to it.
	if n, since, ok := storedCounter(t, js, auth.UserKey("alice")); !ok || n != 2 || time.Since(since) < window {
		t.Fatalf("old counter = %d since %v (present %v), want 2 from a window ago", n, since, ok)
	}
	mustFail(t, l, "alice", "nats")
	if n, since, _ := storedCounter(t, js, auth.UserKey("alice")); n != 1 || time.Since(since) > window/2 {
		t.Errorf("after a failure in a new window: count %d since %v, want 1 since now", n, since)
	}
	if wait := mustCheck(t, l, "alice", "nats"); wait != 0 {
		t.Errorf("one failure into the new window: wait %v, want 0", wait)
	}

	kv, err := js.KeyValue(testContext(t), auth.FailuresBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != window {
		t.Errorf("bucket max age = %v, want the window %v", st.TTL(), window)
	}
}

func TestLimiterSucceededClearsTheUser(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 2, PerAddr: 100, Window: time.Minute})
	ctx := testContext(t)
	if err := l.Succeeded(ctx, "alice"); err != nil { // nothing to clear
		t.Fatal(err)
	}
	mustFail(t, l, "alice", "192.0.2.1")
	mustFail(t, l, "alice", "192.0.2.1")
	if mustCheck(t, l, "alice", "192.0.2.1") == 0 {
		t.Fatal("not limited after 2 failures")
	}
	if err := l.Succeeded(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if wait := mustCheck(t, l, "alice", "192.0.2.1"); wait != 0 {
		t.Errorf("after Succeeded: wait %v, want 0", wait)
	}
	if _, _, ok := storedCounter(t, js, auth.UserKey("alice")); ok {
		t.Error("the user's counter is still stored")
	}
	if n, _, _ := storedCounter(t, js, auth.AddrKey("192.0.2.1")); n != 2 {
		t.Errorf("address count = %d, want 2: a success clears the user only", n)
	}
	mustFail(t, l, "alice", "192.0.2.1") // counting starts again after a delete
	if n, _, _ := storedCounter(t, js, auth.UserKey("alice")); n != 1 {
		t.Errorf("count after a new failure = %d, want 1", n)
	}
}

// Concurrent failures, as on several runners, are all counted.
func TestLimiterCountsConcurrentFailures(t *testing.T) {
	t.Parallel()
	s, js := startJS(t)
	limits := auth.Limits{PerUser: 5, PerAddr: 20, Window: time.Minute}
	limiters := []*auth.Limiter{newLimiter(t, js, limits)}
	other, err := auth.OpenLimiter(testContext(t), connectJS(t, s), limits)
	if err != nil {
		t.Fatal(err)
	}
	limiters = append(limiters, other)

	const failures = 20
	var wg sync.WaitGroup
	errs := make(chan error, failures)
	for i := range failures {
		wg.Go(func() {
			errs <- limiters[i%2].Failed(testContext(t), "carol", "198.51.100.7")
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for _, key := range []string{auth.UserKey("carol"), auth.AddrKey("198.51.100.7")} {
		if n, _, _ := storedCounter(t, js, key); n != failures {
			t.Errorf("count of %s = %d, want %d", key, n, failures)
		}
	}
	if mustCheck(t, limiters[1], "carol", "203.0.113.1") == 0 {
		t.Error("the other runner's limiter does not see the failures")
	}
}

// Any username or address, whatever its characters, gets a valid key.
func TestLimiterKeysAreHashes(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 1, PerAddr: 100, Window: time.Minute})
	keyRE := regexp.MustCompile(`^[ua]\.[0-9a-f]{64}$`)
	for _, user := range []string{"ünïcødé ✓", "a.*.>", "", "..", "\x00\n"} {
		if k := auth.UserKey(user); !keyRE.MatchString(k) {
			t.Errorf("UserKey(%q) = %q", user, k)
		}
		mustFail(t, l, user, user)
		if mustCheck(t, l, user, "192.0.2.1") == 0 {
			t.Errorf("user %q: the failure was not counted", user)
		}
	}
	if auth.UserKey("x") == auth.AddrKey("x") {
		t.Error("a username and an address share a counter")
	}
}

func TestOpenLimiterWithoutBucket(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	if _, err := auth.OpenLimiter(testContext(t), js, auth.Limits{}); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("OpenLimiter without a bucket: %v, want ErrBucketNotFound", err)
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{})
	if got, want := l.Limits(), (auth.Limits{PerUser: 5, PerAddr: 20, Window: 5 * time.Minute}); got != want {
		t.Errorf("default limits = %+v, want %+v", got, want)
	}
	for _, bad := range []auth.Limits{{PerUser: -1}, {PerAddr: -1}, {Window: -time.Second}} {
		if _, err := auth.OpenLimiter(testContext(t), js, bad); err == nil {
			t.Errorf("OpenLimiter(%+v) accepted negative limits", bad)
		}
	}
}
