//go:build linux

package process

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// listensInGroup checks that the TCP socket that takes the connections
// to host (127.0.0.1:port) is held by a process of the process group
// pgid: a listening socket on 127.0.0.1, or else on 0.0.0.0 or [::], of
// that port, found in /proc/net/tcp{,6}, whose inode a process of the
// group has among its open files.
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
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			if os.IsNotExist(err) && strings.HasSuffix(f, "6") {
				continue // no IPv6
			}
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Scan() // the header
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" { // TCP_LISTEN
				continue
			}
			addr, p, ok := procNetAddr(fields[1])
			if !ok || p != port {
				continue
			}
			switch {
			case addr == netip.AddrFrom4([4]byte{127, 0, 0, 1}):
				loopback = append(loopback, fields[9])
			case addr.IsUnspecified() || addr.Is4In6() && addr.Unmap().IsUnspecified():
				wildcard = append(wildcard, fields[9])
			}
		}
	}
	if len(loopback) > 0 {
		return loopback, nil
	}
	return wildcard, nil
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
