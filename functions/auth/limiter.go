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

// Limits of login attempts. Zero fields take the defaults.
type Limits struct {
	PerUser int           // attempts (failed or being checked) per username per window; default 5
	PerAddr int           // attempts (failed or being checked) per client address per window; default 20
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

// Limiter counts login attempts in KV bucket [FailuresBucket], shared by
// every runner, so that the limits hold across a cluster rather than per
// process. It is safe for concurrent use.
//
// An attempt is counted by [Limiter.Attempt] before its password is
// checked, and given back by [Limiter.Succeeded] when the password was
// right, so what remains counted are the failed logins, and the ones
// still being checked. Counting first is what makes the limits hold for
// concurrent logins: of any number of attempts sent at once, at most the
// limit get their password checked.
//
// A counter is a JSON document {"count": N, "since": TIME} under the key
// "u." (username) or "a." (client address) followed by the hex SHA-256
// of the value, so that any input is a valid key and the bucket holds no
// usernames or addresses in clear; a guess can still be tested against a
// key by hashing it, so keep the bucket to the roles that need it. Every
// change is a compare-and-set on the counter's revision. The window is
// fixed and starts at a counter's first attempt; an attempt a window or
// more after it starts a new one. The times are the runners' clocks: keep
// them in sync (NTP).
type Limiter struct {
	kv     jetstream.KeyValue
	limits Limits
}

// CreateLimiter creates the bucket [FailuresBucket], or updates its
// configuration, and returns a limiter on it. Entries vanish a window
// after their last write (the bucket's max age is limits.Window), so
// the bucket holds only the counters that still matter. replicas 0 opens
// an existing bucket as it is (its max age included) and creates a
// missing one with 1 replica, which the auth role may do.
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

// BucketTTL returns how long the bucket keeps a counter: a limiter whose
// window is longer forgets failures before its window ends.
func (l *Limiter) BucketTTL(ctx context.Context) (time.Duration, error) {
	st, err := l.kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("limiter: bucket %s: %w", FailuresBucket, err)
	}
	return st.TTL(), nil
}

// counter is a count of login attempts in a window starting at Since.
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

// Attempt counts a login attempt for username from addr, before its
// password is checked. It returns 0 when the password may be checked;
// otherwise how long the caller must wait before trying again, the longer
// of the remaining windows of the counters at their limit, and the
// attempt is not counted.
//
// The username's counter is taken first, then the address's; each is a
// compare-and-set that refuses when the counter already holds its limit,
// so that concurrent attempts, on one runner or several, never take more
// than the limit. When the address refuses, the username's counter gets
// its attempt back: attempts refused from an address do not lock its
// users out. An error is a fault of the store; the password must not be
// checked then (a failed give-back may leave one attempt counted, which
// errs on the side of the limit).
func (l *Limiter) Attempt(ctx context.Context, username, addr string) (time.Duration, error) {
	userKey, addrKey := UserKey(username), AddrKey(addr)
	wait, err := l.take(ctx, userKey, l.limits.PerUser)
	if err != nil {
		return 0, err
	}
	if wait > 0 {
		// Retry-After is the longest wait: the address may be at its
		// limit too, and past the user's window it would still refuse.
		c, _, err := l.get(ctx, addrKey)
		if err != nil {
			return 0, err
		}
		if c.Count >= l.limits.PerAddr {
			wait = max(wait, l.left(c))
		}
		return wait, nil
	}
	wait, err = l.take(ctx, addrKey, l.limits.PerAddr)
	if err == nil && wait > 0 {
		err = l.giveBack(ctx, userKey)
	}
	if err != nil {
		return 0, err
	}
	return wait, nil
}

// Succeeded records that an attempt counted by [Limiter.Attempt] had the
// right password: it clears the username's counter, and gives the
// attempt back to the address's, so that the good logins of many users
// behind one address (a NAT, a proxy) do not use up its limit; the
// address's failures stay counted. An error leaves counted what could
// not be cleared, till the window ends.
func (l *Limiter) Succeeded(ctx context.Context, username, addr string) error {
	return errors.Join(l.clear(ctx, UserKey(username)), l.giveBack(ctx, AddrKey(addr)))
}

// take counts one attempt on key, unless its counter holds limit already;
// then it returns the time left of the counter's window, never 0.
func (l *Limiter) take(ctx context.Context, key string, limit int) (time.Duration, error) {
	var wait time.Duration
	err := l.change(ctx, key, func(c *counter) bool {
		wait = 0 // from a round that lost the race
		if c.Count >= limit {
			wait = max(l.left(*c), time.Nanosecond) // a refusal always makes the caller wait
			return false
		}
		if c.Count == 0 {
			c.Since = time.Now().UTC()
		}
		c.Count++
		return true
	})
	return wait, err
}

// giveBack takes one attempt off a counter, when it still counts any.
func (l *Limiter) giveBack(ctx context.Context, key string) error {
	return l.change(ctx, key, func(c *counter) bool {
		if c.Count == 0 { // expired, cleared, or already given back
			return false
		}
		c.Count--
		return true
	})
}

// clear deletes a counter, when there is one.
func (l *Limiter) clear(ctx context.Context, key string) error {
	_, rev, err := l.get(ctx, key)
	if err != nil || rev == 0 { // rev 0: no counter, nothing to write
		return err
	}
	// Unconditional: whatever was counted before the good login goes,
	// including the attempts that raced with it.
	if err := l.kv.Delete(ctx, key); err != nil {
		return fmt.Errorf("clear login attempts: %w", err)
	}
	return nil
}

// left is the time left of a counter's window. A clock behind the one
// that started the window sees more than a window left; a window is the
// most anyone waits.
func (l *Limiter) left(c counter) time.Duration {
	return min(time.Until(c.Since.Add(l.limits.Window)), l.limits.Window)
}

// get returns a counter that still counts and its revision; a missing or
// expired counter is zero with revision of the entry, 0 when none.
func (l *Limiter) get(ctx context.Context, key string) (counter, uint64, error) {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return counter{}, 0, nil
	}
	if err != nil {
		return counter{}, 0, fmt.Errorf("read login attempts: %w", err)
	}
	var c counter
	if json.Unmarshal(e.Value(), &c) != nil || time.Since(c.Since) >= l.limits.Window {
		// A window that ended counts nothing, nor does an entry that is
		// not a counter: the next attempt overwrites it.
		c = counter{}
	}
	return c, e.Revision(), nil
}

// changeAttempts bounds the compare-and-set rounds of a change. Each
// round of a race has a winner, and a counter at its limit refuses
// without writing, so racing attempts need about as many rounds as the
// limit; past this many, a login fails with 503 rather than going
// uncounted.
const changeAttempts = 64

// change applies f to a counter with optimistic concurrency: Create for
// a new counter, Update at the revision read otherwise, reading again and
// applying f anew after losing a race. f returns false to leave the
// counter as it is.
func (l *Limiter) change(ctx context.Context, key string, f func(*counter) bool) error {
	for attempt := 1; ; attempt++ {
		c, rev, err := l.get(ctx, key)
		if err != nil {
			return err
		}
		if !f(&c) {
			return nil
		}
		data, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("count login attempts: %w", err)
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
			return fmt.Errorf("count login attempts: %w", err)
		}
		if attempt == changeAttempts {
			return fmt.Errorf("count login attempts: gave up after %d conflicting updates: %w", attempt, err)
		}
		// Back off a little, at random, so that racing runners spread out.
		select {
		case <-ctx.Done():
			return fmt.Errorf("count login attempts: %w", ctx.Err())
		case <-time.After(time.Duration(rand.Int64N(int64(attempt)*int64(time.Millisecond)) + 1)):
		}
	}
}
