//go:build linux

package process

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// listensInGroup checks that the TCP socket that takes the connections
// to host (127.0.0.1:port) is held by a process of the process group
// pgid: a listening socket on 127.0.0.1, or else on 0.0.0.0 or [::], of
// that port, as sock_diag (or /proc/net/tcp{,6}) lists them, whose inode
// a process of the group has among its open files.
func listensInGroup(host string, pgid int) error {
	ap, err := netip.ParseAddrPort(host)
	if err != nil {
		return err
	}
	inodes, err := listeners(ap.Port())
	if err != nil {
		return fmt.Errorf("port %d: %w", ap.Port(), err)
	}
	if len(inodes) == 0 {
		// Listening, then closed since the probe: not ready yet.
		return fmt.Errorf("port %d: no socket listens on it", ap.Port())
	}
	held, err := groupSockets(pgid)
	if err != nil {
		return fmt.Errorf("port %d: %w", ap.Port(), err)
	}
	for _, inode := range inodes {
		if !held[inode] {
			return fmt.Errorf("port %d is held by another process than the function's (process group %d)", ap.Port(), pgid)
		}
	}
	return nil
}

// listeners returns the inodes of the TCP sockets that listen on port
// and would take a connection to 127.0.0.1: those bound to it, or, when
// none is, those bound to the wildcard address (0.0.0.0, [::]).
func listeners(port uint16) ([]string, error) {
	var loopback, wildcard []string
	add := func(addr netip.Addr, p uint16, inode string) {
		if p != port {
			return
		}
		switch addr = addr.Unmap(); {
		case addr == netip.AddrFrom4([4]byte{127, 0, 0, 1}):
			loopback = append(loopback, inode)
		case addr.IsUnspecified():
			wildcard = append(wildcard, inode)
		}
	}
	if err := diagListeners(add); err != nil {
		// No sock_diag (a sandbox such as gVisor): /proc/net/tcp,
		// slower, as it lists every TCP socket, not only the
		// listening ones.
		if err := procListeners(add); err != nil {
			return nil, err
		}
	}
	if len(loopback) > 0 {
		return loopback, nil
	}
	return wildcard, nil
}

// diagListeners passes the address, port and inode of each listening
// TCP socket to add, as the kernel's sock_diag netlink interface lists
// them.
func diagListeners(add func(netip.Addr, uint16, string)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	for seq, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		// struct nlmsghdr, then struct inet_diag_req_v2: family,
		// protocol, ext, pad, states (TCP_LISTEN only), and an empty
		// struct inet_diag_sockid (48 bytes).
		req := make([]byte, unix.SizeofNlMsghdr+56)
		binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
		binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
		binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
		binary.NativeEndian.PutUint32(req[8:], uint32(seq+1))
		req[16], req[17] = family, unix.IPPROTO_TCP
		binary.NativeEndian.PutUint32(req[20:], 1<<tcpListen)
		if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return os.NewSyscallError("sendto", err)
		}
		if err := diagReceive(fd, add); err != nil {
			return err
		}
	}
	return nil
}

// tcpListen is TCP_LISTEN, the state of a listening socket.
const tcpListen = 10

// diagReceive reads the answer to a sock_diag dump: struct
// inet_diag_msg's until NLMSG_DONE.
func diagReceive(fd int, add func(netip.Addr, uint16, string)) error {
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return os.NewSyscallError("recvfrom", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return os.NewSyscallError("sock_diag", syscall.Errno(errno))
					}
				}
				return errors.New("sock_diag: error")
			}
			// family, state, timer, retrans; id: sport (big-endian),
			// dport, src (16 bytes), dst, if, cookie; expires,
			// rqueue, wqueue, uid, inode.
			d := m.Data
			if len(d) < 72 {
				continue
			}
			var addr netip.Addr
			if d[0] == unix.AF_INET {
				addr = netip.AddrFrom4([4]byte(d[8:12]))
			} else {
				addr = netip.AddrFrom16([16]byte(d[8:24]))
			}
			add(addr, binary.BigEndian.Uint16(d[4:6]), strconv.FormatUint(uint64(binary.NativeEndian.Uint32(d[68:72])), 10))
		}
	}
}

// procListeners is diagListeners from /proc/net/tcp{,6}.
func procListeners(add func(netip.Addr, uint16, string)) error {
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			if os.IsNotExist(err) && strings.HasSuffix(f, "6") {
				continue // no IPv6
			}
			return err
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Scan() // the header
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" { // TCP_LISTEN
				continue
			}
			if addr, p, ok := procNetAddr(fields[1]); ok {
				add(addr, p, fields[9])
			}
		}
	}
	return nil
}

// procNetAddr parses an address of /proc/net/tcp{,6}: hex of 32-bit
// words in the host's byte order, ':', the port in hex.
func procNetAddr(s string) (netip.Addr, uint16, bool) {
	a, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || (len(a) != 8 && len(a) != 32) {
		return netip.Addr{}, 0, false
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return addr.Unmap(), uint16(port), true
}

// groupSockets returns the inodes of the sockets the processes of the
// process group pgid have open.
func groupSockets(pgid int) (map[string]bool, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	held := map[string]bool{}
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || processGroup(pid) != pgid {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", e.Name(), "fd"))
		if err != nil {
			continue // exited meanwhile
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join("/proc", e.Name(), "fd", fd.Name()))
			if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
				held[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	return held, nil
}

// processGroup is the process group of pid, field 5 of /proc/PID/stat;
// -1 if it cannot be read.
func processGroup(pid int) int {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return -1
	}
	// pid (comm) state ppid pgrp ...: comm may hold spaces and ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return -1
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 3 {
		return -1
	}
	pgrp, err := strconv.Atoi(fields[2])
	if err != nil {
		return -1
	}
	return pgrp
}
