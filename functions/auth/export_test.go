package auth

import (
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"
)

// CountCompares makes u count its bcrypt comparisons, so that tests can
// tell whether a password was checked. Call it before u is used.
func CountCompares(u *Users) *atomic.Int64 {
	var n atomic.Int64
	u.compare = func(hash, password []byte) error {
		n.Add(1)
		return bcrypt.CompareHashAndPassword(hash, password)
	}
	return &n
}

// DummyHash is the hash u checks unknown users against.
func DummyHash(u *Users) []byte { return u.dummyHash() }

// ClientAddr is the address a login's failures count against.
var ClientAddr = clientAddr

// UsersOn is a user store on kv, which tests may fake.
func UsersOn(kv jetstream.KeyValue) *Users { return newUsers(kv) }
