package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Limits of failed logins. Zero fields take the defaults.
type Limits struct {
	PerUser int           // failed logins per username per window; default 5
	PerAddr int           // failed logins per client address per window; default 20
	Window  time.Duration // default 5m
}

// Default limits.
const (
	DefaultPerUser = 5
	DefaultPerAddr = 20
	DefaultWindow  = 5 * time.Minute
)

func (l Limits) withDefaults() (Limits, error) {
	if l.PerUser < 0 || l.PerAddr < 0 || l.Window < 0 {
		return l, fmt.Errorf("auth: login limits cannot be negative: %+v", l)
	}
	if l.PerUser == 0 {
		l.PerUser = DefaultPerUser
	}
	if l.PerAddr == 0 {
		l.PerAddr = DefaultPerAddr
	}
	if l.Window == 0 {
		l.Window = DefaultWindow
	}
	return l, nil
}

// Limiter counts failed logins in KV bucket [FailuresBucket], shared by
// every runner, so that the limits hold across a cluster rather than per
// process. It is safe for concurrent use.
//
// A counter is a JSON document {"count": N, "since": TIME} under the key
// "u." (username) or "a." (client address) followed by the hex SHA-256
// of the value, so that any input is a valid key and the bucket holds no
// usernames or addresses in clear. The window is fixed and starts at a
// counter's first failure; a failure a window or more after it starts a
// new one. The times are the runners' clocks: keep them in sync (NTP).
type Limiter struct {
	kv     jetstream.KeyValue
	limits Limits
}

// CreateLimiter creates the bucket [FailuresBucket], or updates its
// configuration, and returns a limiter on it. Entries vanish a window
// after their last write (the bucket's max age is limits.Window), so
// the bucket holds only the counters that still matter. replicas 0 means
// 1 for a new bucket and leaves an existing bucket's replicas as they
// are. As [CreateUsers], it asks to create first, which the runner role
// may do.
func CreateLimiter(ctx context.Context, js jetstream.JetStream, limits Limits, replicas int) (*Limiter, error) {
	limits, err := limits.withDefaults()
	if err != nil {
		return nil, err
	}
	kv, err := ensureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:      FailuresBucket,
		Description: "Shoal failed-login counters",
		History:     1,
		TTL:         limits.Window,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, err
	}
	return &Limiter{kv: kv, limits: limits}, nil
}

// OpenLimiter binds to the existing bucket [FailuresBucket], for a
// connection that may not create streams. When the bucket does not
// exist, the error wraps jetstream.ErrBucketNotFound. The limits are
// this limiter's; the bucket's max age, set by CreateLimiter, should be
// at least limits.Window, or counters vanish before their window ends.
func OpenLimiter(ctx context.Context, js jetstream.JetStream, limits Limits) (*Limiter, error) {
	limits, err := limits.withDefaults()
	if err != nil {
		return nil, err
	}
	kv, err := openBucket(ctx, js, FailuresBucket)
	if err != nil {
		return nil, err
	}
	return &Limiter{kv: kv, limits: limits}, nil
}

// Limits returns the limits in force, defaults applied.
func (l *Limiter) Limits() Limits { return l.limits }

// counter is a count of failed logins in a window starting at Since.
type counter struct {
	Count int       `json:"count"`
	Since time.Time `json:"since"`
}

// UserKey is the key of a username's counter in [FailuresBucket].
func UserKey(username string) string { return "u." + hash(username) }

// AddrKey is the key of a client address's counter in [FailuresBucket].
func AddrKey(addr string) string { return "a." + hash(addr) }

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Check reports how long the caller must wait before trying to log in
// again, 0 when it may try now: the longer of the remaining windows of
// the username's and the address's counters that reached their limit.
func (l *Limiter) Check(ctx context.Context, username, addr string) (time.Duration, error) {
	var wait time.Duration
	for _, c := range []struct {
		key   string
		limit int
	}{{UserKey(username), l.limits.PerUser}, {AddrKey(addr), l.limits.PerAddr}} {
		cnt, _, err := l.get(ctx, c.key)
		if err != nil {
			return 0, err
		}
		if cnt.Count < c.limit {
			continue
		}
		// A clock behind the one that started the window sees more than a
		// window left; a window is the most anyone waits.
		left := min(cnt.Since.Add(l.limits.Window).Sub(time.Now()), l.limits.Window)
		wait = max(wait, left)
	}
	return wait, nil
}

// Failed records a failed login for both the username and the address.
func (l *Limiter) Failed(ctx context.Context, username, addr string) error {
	return errors.Join(l.increment(ctx, UserKey(username)), l.increment(ctx, AddrKey(addr)))
}

// Succeeded clears the username's counter; the address's stays, so that
// one good login does not reset the count of guesses from that address.
func (l *Limiter) Succeeded(ctx context.Context, username string) error {
	key := UserKey(username)
	_, rev, err := l.get(ctx, key)
	if err != nil || rev == 0 { // rev 0: no counter, nothing to write
		return err
	}
	if err := l.kv.Delete(ctx, key); err != nil {
		return fmt.Errorf("clear failed logins: %w", err)
	}
	return nil
}

// get returns a counter that still counts and its revision; a missing or
// expired counter is zero with revision of the entry, 0 when none.
func (l *Limiter) get(ctx context.Context, key string) (counter, uint64, error) {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return counter{}, 0, nil
	}
	if err != nil {
		return counter{}, 0, fmt.Errorf("read failed logins: %w", err)
	}
	var c counter
	if json.Unmarshal(e.Value(), &c) != nil || time.Since(c.Since) >= l.limits.Window {
		// A window that ended counts nothing, nor does an entry that is
		// not a counter: the next failure overwrites it.
		c = counter{}
	}
	return c, e.Revision(), nil
}

// incrementAttempts bounds the compare-and-set retries of an increment.
// Each round of a race has a winner, so N concurrent failures on one key
// need at most N attempts; past this many, a login fails with 503 rather
// than going uncounted.
const incrementAttempts = 64

// increment adds one failure to a counter with optimistic concurrency:
// Create for a new counter, Update at the revision read otherwise,
// reading again after losing a race, so that concurrent failures on
// several runners are all counted.
func (l *Limiter) increment(ctx context.Context, key string) error {
	for attempt := 1; ; attempt++ {
		c, rev, err := l.get(ctx, key)
		if err != nil {
			return err
		}
		if c.Count == 0 {
			c.Since = time.Now().UTC()
		}
		c.Count++
		data, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("record a failed login: %w", err)
		}
		if rev == 0 {
			_, err = l.kv.Create(ctx, key, data)
		} else {
			_, err = l.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("record a failed login: %w", err)
		}
		if attempt == incrementAttempts {
			return fmt.Errorf("record a failed login: gave up after %d conflicting updates: %w", attempt, err)
		}
		// Back off a little, at random, so that racing runners spread out.
		select {
		case <-ctx.Done():
			return fmt.Errorf("record a failed login: %w", ctx.Err())
		case <-time.After(time.Duration(rand.Int64N(int64(attempt)*int64(time.Millisecond)) + 1)):
		}
	}
}
