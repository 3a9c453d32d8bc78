package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/shoal-dev/shoal/manifest"
	"golang.org/x/crypto/bcrypt"
)

// Names of the auth function's KV buckets.
const (
	UsersBucket    = "shoal_users"          // users, key = username
	FailuresBucket = "shoal_login_failures" // failed-login counters
)

// Bounds of what an account holds.
const (
	MaxUsername   = 64                     // bytes
	MinPassword   = 8                      // bytes
	MaxPassword   = 72                     // bytes: bcrypt ignores anything past the 72nd
	MaxPermission = manifest.MaxPermission // bytes, as in fn.yaml
)

// Errors of the user store. The errors returned wrap them, with the
// details; test with errors.Is.
var (
	ErrNoUserStore       = errors.New("no user store")
	ErrUserExists        = errors.New("user already exists")
	ErrNoSuchUser        = errors.New("no such user")
	ErrBadCredentials    = errors.New("invalid username or password")
	ErrInvalidUsername   = errors.New("invalid username")
	ErrInvalidPassword   = errors.New("invalid password")
	ErrInvalidPermission = errors.New("invalid permission")
)

// User is one account, as stored (JSON) under its name in [UsersBucket].
type User struct {
	Name         string    `json:"name"`
	PasswordHash []byte    `json:"password_hash"` // bcrypt
	Permissions  []string  `json:"permissions"`
	Created      time.Time `json:"created"`
}

var (
	usernameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

// ValidUsername returns an error wrapping [ErrInvalidUsername] that says
// what is wrong when name cannot be a username: 1 to 64 letters, digits
// and . _ -, starting with a letter or digit. A username is also a NATS
// KV key, so it cannot end with a dot nor hold two dots in a row.
func ValidUsername(name string) error {
	switch {
	case name == "" || len(name) > MaxUsername:
		return fmt.Errorf("%w %.80q: use 1 to %d characters", ErrInvalidUsername, name, MaxUsername)
	case !usernameRE.MatchString(name):
		return fmt.Errorf("%w %q: use letters, digits and . _ -, starting with a letter or digit", ErrInvalidUsername, name)
	case strings.HasSuffix(name, ".") || strings.Contains(name, ".."):
		return fmt.Errorf("%w %q: a username cannot end with a dot or hold two dots in a row", ErrInvalidUsername, name)
	}
	return nil
}

func validPassword(password string) error {
	if len(password) < MinPassword || len(password) > MaxPassword {
		return fmt.Errorf("%w: a password has %d to %d bytes, this one has %d", ErrInvalidPassword, MinPassword, MaxPassword, len(password))
	}
	return nil
}

// validPermissions checks permissions as fn.yaml's are checked and
// returns a copy, never nil (stored as [], not null).
func validPermissions(permissions []string) ([]string, error) {
	seen := make(map[string]bool, len(permissions))
	for _, p := range permissions {
		switch {
		case !manifest.ValidPermission(p): // fn.yaml's rule: any permission a function requires can be granted
			return nil, fmt.Errorf("%w %.140q: use 1 to %d letters, digits and . _ : / -", ErrInvalidPermission, p, MaxPermission)
		case seen[p]:
			return nil, fmt.Errorf("%w: %q is listed twice", ErrInvalidPermission, p)
		}
		seen[p] = true
	}
	return append(make([]string, 0, len(permissions)), permissions...), nil
}

// Users is the user store, in KV bucket [UsersBucket]. It is safe for
// concurrent use once Cost is set.
type Users struct {
	// Cost is the bcrypt cost of the password hashes Add and SetPassword
	// make, and of the dummy hash Authenticate checks unknown users
	// against; 0 means bcrypt.DefaultCost. Set it before use.
	Cost int

	kv      jetstream.KeyValue
	compare func(hash, password []byte) error // bcrypt.CompareHashAndPassword; tests count calls

	mu    sync.Mutex
	dummy map[int][]byte // by cost
}

func newUsers(kv jetstream.KeyValue) *Users {
	return &Users{kv: kv, compare: bcrypt.CompareHashAndPassword}
}

// CreateUsers creates the bucket [UsersBucket], or updates its
// configuration, and returns the store in it. The bucket keeps one
// revision per user (history 1): an old password hash is gone as soon as
// it is replaced. replicas 0 opens an existing bucket as it is and
// creates a missing one with 1 replica, which the auth role, allowed to
// create the bucket but not to update it, may do; other replicas update
// an existing bucket, which takes the right to update streams.
func CreateUsers(ctx context.Context, js jetstream.JetStream, replicas int) (*Users, error) {
	kv, err := ensureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:      UsersBucket,
		Description: "Shoal users: bcrypt password hashes and permissions",
		History:     1,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, err
	}
	return newUsers(kv), nil
}

// OpenUsers binds to the existing bucket [UsersBucket]. When the bucket
// does not exist, the error wraps both [ErrNoUserStore] and
// jetstream.ErrBucketNotFound.
func OpenUsers(ctx context.Context, js jetstream.JetStream) (*Users, error) {
	kv, err := openBucket(ctx, js, UsersBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w: %w (run shoal up, or add a user with shoal user add)", ErrNoUserStore, err)
	}
	if err != nil {
		return nil, err
	}
	return newUsers(kv), nil
}

func (u *Users) cost() int {
	if u.Cost == 0 {
		return bcrypt.DefaultCost
	}
	return u.Cost
}

// Add adds a user with a password and the permissions its tokens hold.
// It returns an error wrapping [ErrUserExists] when the name is taken,
// or [ErrInvalidUsername], [ErrInvalidPassword] (8 to 72 bytes) or
// [ErrInvalidPermission] (fn.yaml's rule, no duplicates).
func (u *Users) Add(ctx context.Context, name, password string, permissions []string) error {
	if err := ValidUsername(name); err != nil {
		return err
	}
	if err := validPassword(password); err != nil {
		return err
	}
	perms, err := validPermissions(permissions)
	if err != nil {
		return err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), u.cost())
	if err != nil {
		return fmt.Errorf("add user %q: hash the password: %w", name, err)
	}
	data, err := json.Marshal(User{Name: name, PasswordHash: hash, Permissions: perms, Created: time.Now().UTC()})
	if err != nil {
		return fmt.Errorf("add user %q: %w", name, err)
	}
	// Create, not Put: of two admins adding the same name at once, one
	// gets ErrUserExists rather than both succeeding.
	if _, err := u.kv.Create(ctx, name, data); err != nil {
		if isConflict(err) {
			return fmt.Errorf("add user %q: %w", name, ErrUserExists)
		}
		return fmt.Errorf("add user %q: %w", name, err)
	}
	return nil
}

// SetPassword replaces a user's password; tokens already issued stay
// valid until they expire.
func (u *Users) SetPassword(ctx context.Context, name, password string) error {
	if err := validPassword(password); err != nil {
		return err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), u.cost())
	if err != nil {
		return fmt.Errorf("set the password of user %q: hash the password: %w", name, err)
	}
	return u.update(ctx, name, func(user *User) { user.PasswordHash = hash })
}

// SetPermissions replaces a user's permissions; they apply to the tokens
// issued from then on.
func (u *Users) SetPermissions(ctx context.Context, name string, permissions []string) error {
	perms, err := validPermissions(permissions)
	if err != nil {
		return err
	}
	return u.update(ctx, name, func(user *User) { user.Permissions = perms })
}

// updateAttempts bounds the retries of an update that lost a race with
// another writer of the same user.
const updateAttempts = 3

// update applies change to the latest revision of a user and stores it
// only if no one changed the user meanwhile, retrying a few times.
func (u *Users) update(ctx context.Context, name string, change func(*User)) error {
	for attempt := 1; ; attempt++ {
		user, rev, err := u.get(ctx, name)
		if err != nil {
			return err
		}
		change(user)
		data, err := json.Marshal(user)
		if err != nil {
			return fmt.Errorf("update user %q: %w", name, err)
		}
		_, err = u.kv.Update(ctx, name, data, rev)
		if err == nil {
			return nil
		}
		if !isConflict(err) || attempt == updateAttempts {
			return fmt.Errorf("update user %q: %w", name, err)
		}
	}
}

// Remove removes a user; tokens already issued stay valid until they
// expire. It returns an error wrapping [ErrNoSuchUser] when there is no
// such user.
func (u *Users) Remove(ctx context.Context, name string) error {
	_, rev, err := u.get(ctx, name)
	if err != nil {
		return err
	}
	// LastRevision: remove the user that was read, not one added again
	// or changed in between.
	if err := u.kv.Delete(ctx, name, jetstream.LastRevision(rev)); err != nil {
		if isConflict(err) {
			return fmt.Errorf("remove user %q: it changed while being removed; try again: %w", name, err)
		}
		return fmt.Errorf("remove user %q: %w", name, err)
	}
	return nil
}

// Get returns a user; the error wraps [ErrNoSuchUser] when there is no
// such user.
func (u *Users) Get(ctx context.Context, name string) (*User, error) {
	user, _, err := u.get(ctx, name)
	return user, err
}

func (u *Users) get(ctx context.Context, name string) (*User, uint64, error) {
	if err := ValidUsername(name); err != nil {
		return nil, 0, err
	}
	e, err := u.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("%w: %q", ErrNoSuchUser, name)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get user %q: %w", name, err)
	}
	user, err := decodeUser(name, e.Value())
	if err != nil {
		return nil, 0, err
	}
	return user, e.Revision(), nil
}

func decodeUser(key string, data []byte) (*User, error) {
	var user User
	if err := json.Unmarshal(data, &user); err != nil {
		return nil, fmt.Errorf("user %q in KV bucket %s is not a valid record: %w", key, UsersBucket, err)
	}
	user.Name = key // the key is what logins look up
	return &user, nil
}

// List returns every user, sorted by name; none is an empty list. It
// returns the list only once the store said it was complete: a listing cut
// short (a closed connection, a cancelled ctx) is an error, never a
// shorter list.
func (u *Users) List(ctx context.Context) ([]User, error) {
	w, err := u.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer func() { _ = w.Stop() }() // nothing to do about a failed unsubscribe
	users := []User{}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("list users: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				// The watcher stops, and closes the channel, when its
				// subscription ends: the connection closed, or ctx ended.
				if err := ctx.Err(); err != nil {
					return nil, fmt.Errorf("list users: %w", err)
				}
				return nil, fmt.Errorf("list users: the listing stopped before its end (%d users received); try again", len(users))
			}
			if e == nil { // the end of the initial values: every current user was delivered
				sort.Slice(users, func(i, j int) bool { return users[i].Name < users[j].Name })
				return users, nil
			}
			user, err := decodeUser(e.Key(), e.Value())
			if err != nil {
				return nil, err
			}
			users = append(users, *user)
		}
	}
}

// Authenticate checks a user's password. An unknown user, a name that
// cannot be a username and a wrong password all return
// [ErrBadCredentials], and each costs one bcrypt comparison (an unknown
// user's against a dummy hash of cost Cost), so that timing does not tell
// which was wrong. Other errors are faults of the store; they name the
// user only when it exists, since name may be a password typed in the
// wrong field.
func (u *Users) Authenticate(ctx context.Context, name, password string) (*User, error) {
	var user *User
	if ValidUsername(name) == nil {
		e, err := u.kv.Get(ctx, name)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			// Not the name: it may be a password typed as a username,
			// and the error may be logged.
			return nil, fmt.Errorf("authenticate: read KV bucket %s: %w", UsersBucket, err)
		default:
			if user, err = decodeUser(name, e.Value()); err != nil {
				return nil, err // a stored user: the name is a username
			}
		}
	}
	// The dummy hash is made on the first call whoever logs in, so that
	// not even the first unknown user takes longer than a known one.
	hash := u.dummyHash()
	if user != nil {
		hash = user.PasswordHash
	}
	err := u.compare(hash, []byte(password))
	switch {
	case user == nil || len(password) > MaxPassword:
		// bcrypt compares only the first 72 bytes: a longer password
		// would match a stored one it merely starts with.
		return nil, ErrBadCredentials
	case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
		return nil, ErrBadCredentials
	case err != nil:
		return nil, fmt.Errorf("user %q: stored password hash: %w", name, err)
	}
	return user, nil
}

// dummyHash returns the hash unknown users are checked against, of cost
// Cost, made on first use.
func (u *Users) dummyHash() []byte {
	cost := u.cost()
	u.mu.Lock()
	defer u.mu.Unlock()
	if h, ok := u.dummy[cost]; ok {
		return h
	}
	h, err := bcrypt.GenerateFromPassword([]byte("no such user, no such password"), cost)
	if err != nil { // only for a cost out of range, which Add reports too
		h = []byte{}
	}
	if u.dummy == nil {
		u.dummy = map[int][]byte{}
	}
	u.dummy[cost] = h
	return h
}

// ensureBucket creates a KV bucket, or updates an existing one to cfg.
// Replicas 0 opens an existing bucket as it is and creates a missing one
// with 1 replica; that path needs no permission to update streams (the
// auth role has none).
func ensureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	keep := cfg.Replicas <= 0
	if keep {
		kv, err := openBucket(ctx, js, cfg.Bucket)
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return kv, err
		}
		cfg.Replicas = 1
	}
	kv, err := js.CreateKeyValue(ctx, cfg)
	switch {
	case err == nil:
		return kv, nil
	case !errors.Is(err, jetstream.ErrBucketExists):
		return nil, fmt.Errorf("create KV bucket %s: %w", cfg.Bucket, err)
	case keep:
		return openBucket(ctx, js, cfg.Bucket) // created meanwhile
	}
	kv, err = js.UpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("update KV bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

func openBucket(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("open KV bucket %s: %w", bucket, err)
	}
	return kv, nil
}

// isConflict reports whether err is a failed compare-and-set: the key
// exists (Create) or has another revision than expected (Update, Delete
// with LastRevision). Replicated streams report the latter with another
// error code, hence the check of both.
func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
