//go:build !unix

package bundle

// tryLock always succeeds where there is no flock: processes sharing a
// cache may then download a version each, and the rename into place keeps
// the first.
func tryLock(string) (unlock func(), ok bool, err error) { return func() {}, true, nil }
