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

// wantCount checks the stored count of a key; a missing counter is 0.
func wantCount(t *testing.T, js jetstream.JetStream, key string, want int) {
	t.Helper()
	if n, _, _ := storedCounter(t, js, key); n != want {
		t.Errorf("count of %s = %d, want %d", key, n, want)
	}
}

// mustAttempt counts an attempt and returns the wait, 0 when it was
// counted.
func mustAttempt(t *testing.T, l *auth.Limiter, user, addr string) time.Duration {
	t.Helper()
	wait, err := l.Attempt(testContext(t), user, addr)
	if err != nil {
		t.Fatal(err)
	}
	return wait
}

// aboutTheWindow checks a wait is about a fresh window of a minute.
func aboutTheWindow(t *testing.T, what string, wait time.Duration) {
	t.Helper()
	if wait <= 55*time.Second || wait > time.Minute {
		t.Errorf("%s: wait %v, want about the window's remaining minute", what, wait)
	}
}

func TestLimiterPerUser(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 3, PerAddr: 100, Window: time.Minute})
	for i := range 3 {
		if wait := mustAttempt(t, l, "alice", fmt.Sprintf("192.0.2.%d", i+1)); wait != 0 { // from changing addresses
			t.Fatalf("attempt %d: wait %v, want 0", i+1, wait)
		}
	}
	aboutTheWindow(t, "a fourth attempt", mustAttempt(t, l, "alice", "198.51.100.1")) // from an address never seen
	aboutTheWindow(t, "a fifth attempt", mustAttempt(t, l, "alice", "198.51.100.1"))
	wantCount(t, js, auth.UserKey("alice"), 3)        // refusals are not counted
	wantCount(t, js, auth.AddrKey("198.51.100.1"), 0) // nor against the address
	if wait := mustAttempt(t, l, "bob", "192.0.2.1"); wait != 0 {
		t.Errorf("another user: wait %v, want 0", wait)
	}
}

// An address at its limit refuses every username, and gives the
// username's attempt back: refusals from an address lock no one out.
func TestLimiterPerAddress(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 100, PerAddr: 3, Window: time.Minute})
	for _, user := range []string{"alice", "bob", "carol"} {
		if wait := mustAttempt(t, l, user, "192.0.2.1"); wait != 0 {
			t.Fatalf("%s: wait %v, want 0", user, wait)
		}
	}
	aboutTheWindow(t, "a fourth username from the address", mustAttempt(t, l, "dave", "192.0.2.1"))
	wantCount(t, js, auth.AddrKey("192.0.2.1"), 3)
	wantCount(t, js, auth.UserKey("dave"), 0)
	if wait := mustAttempt(t, l, "dave", "192.0.2.2"); wait != 0 {
		t.Errorf("another address: wait %v, want 0", wait)
	}
	wantCount(t, js, auth.UserKey("dave"), 1)
}

// Refused for both, the wait is the longer of the two windows left.
func TestLimiterWaitIsTheLonger(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 1, PerAddr: 2, Window: 2 * time.Second})
	mustAttempt(t, l, "alice", "192.0.2.9") // alice's window starts
	time.Sleep(time.Second)
	mustAttempt(t, l, "bob", "192.0.2.1") // the address's starts a second later
	mustAttempt(t, l, "carol", "192.0.2.1")
	wait := mustAttempt(t, l, "alice", "192.0.2.1")
	if wait <= 1500*time.Millisecond || wait > 2*time.Second {
		t.Errorf("wait %v, want the address's (about 2s), not alice's (about 1s)", wait)
	}
}

func TestLimiterWindowRestarts(t *testing.T) {
	t.Parallel()
	const window = time.Second
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 2, PerAddr: 100, Window: window})
	start := time.Now()
	mustAttempt(t, l, "alice", "nats")
	time.Sleep(window / 2)
	mustAttempt(t, l, "alice", "nats") // keeps the counter stored till 1.5 windows
	wait := mustAttempt(t, l, "alice", "nats")
	if wait <= 0 || wait > window-time.Since(start)+50*time.Millisecond {
		t.Fatalf("after 2 attempts: wait %v, want what is left of the window that began %v ago", wait, time.Since(start))
	}
	time.Sleep(wait)
	// The counter of the old window is still stored; the next attempt
	// starts a new window rather than adding to it.
	if n, since, ok := storedCounter(t, js, auth.UserKey("alice")); !ok || n != 2 || time.Since(since) < window {
		t.Fatalf("old counter = %d since %v (present %v), want 2 from a window ago", n, since, ok)
	}
	if wait := mustAttempt(t, l, "alice", "nats"); wait != 0 {
		t.Fatalf("a window after the first attempt: wait %v, want 0", wait)
	}
	if n, since, _ := storedCounter(t, js, auth.UserKey("alice")); n != 1 || time.Since(since) > window/2 {
		t.Errorf("after an attempt in a new window: count %d since %v, want 1 since now", n, since)
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

// A success clears the user and gives the attempt back to the address:
// the address keeps its failures, never goes below 0, and many users
// logging in from it do not use it up.
func TestLimiterSucceeded(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	l := newLimiter(t, js, auth.Limits{PerUser: 3, PerAddr: 3, Window: time.Minute})
	ctx := testContext(t)
	const addr = "192.0.2.1"
	if err := l.Succeeded(ctx, "alice", addr); err != nil { // nothing to clear or give back
		t.Fatal(err)
	}
	wantCount(t, js, auth.AddrKey(addr), 0)
	mustAttempt(t, l, "alice", addr) // two failures
	mustAttempt(t, l, "alice", addr)
	mustAttempt(t, l, "alice", addr) // a success
	if err := l.Succeeded(ctx, "alice", addr); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := storedCounter(t, js, auth.UserKey("alice")); ok {
		t.Error("the user's counter is still stored")
	}
	wantCount(t, js, auth.AddrKey(addr), 2)
	for i := range 10 { // ten good logins from an address with one attempt left
		if wait := mustAttempt(t, l, fmt.Sprintf("user%d", i), addr); wait != 0 {
			t.Fatalf("good login %d: wait %v", i+1, wait)
		}
		if err := l.Succeeded(ctx, fmt.Sprintf("user%d", i), addr); err != nil {
			t.Fatal(err)
		}
	}
	wantCount(t, js, auth.AddrKey(addr), 2)
	for range 3 { // a success without its attempt gives back no more than was counted
		if err := l.Succeeded(ctx, "alice", addr); err != nil {
			t.Fatal(err)
		}
	}
	wantCount(t, js, auth.AddrKey(addr), 0)
	mustAttempt(t, l, "alice", addr) // counting starts again after a delete
	wantCount(t, js, auth.UserKey("alice"), 1)
}

// Concurrent attempts, as on several runners, take no more than the
// limit, and every attempt they took is counted.
func TestLimiterConcurrentAttempts(t *testing.T) {
	t.Parallel()
	s, js := startJS(t)
	limits := auth.Limits{PerUser: 5, PerAddr: 100, Window: time.Minute}
	limiters := []*auth.Limiter{newLimiter(t, js, limits)}
	other, err := auth.OpenLimiter(testContext(t), connectJS(t, s), limits)
	if err != nil {
		t.Fatal(err)
	}
	limiters = append(limiters, other)

	const attempts = 40
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		allowed int
		start   = make(chan struct{})
	)
	for i := range attempts {
		wg.Go(func() {
			<-start
			wait, err := limiters[i%2].Attempt(testContext(t), "carol", "198.51.100.7")
			if err != nil {
				t.Error(err)
				return
			}
			if wait == 0 {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	if allowed != limits.PerUser {
		t.Errorf("%d of %d concurrent attempts allowed, want the limit %d", allowed, attempts, limits.PerUser)
	}
	wantCount(t, js, auth.UserKey("carol"), limits.PerUser)
	wantCount(t, js, auth.AddrKey("198.51.100.7"), limits.PerUser)
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
		if k := auth.AddrKey(user); !keyRE.MatchString(k) {
			t.Errorf("AddrKey(%q) = %q", user, k)
		}
		mustAttempt(t, l, user, user)
		if mustAttempt(t, l, user, "192.0.2.1") == 0 {
			t.Errorf("user %q: the attempt was not counted", user)
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
