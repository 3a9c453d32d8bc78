//go:build !unix

package loadgen

import "net"

// connAlive is not available here.
func connAlive(net.Conn) (alive, ok bool) { return false, false }
