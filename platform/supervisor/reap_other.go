//go:build !linux

package supervisor

import "errors"

// Elsewhere than on Linux there is no child subreaper: ReapOrphans does
// nothing.
func setSubreaper(bool) error { return errors.ErrUnsupported }

func listProcs() (map[int]procStat, error) { return nil, errors.ErrUnsupported }

func reapChild(int) (bool, error) { return false, errors.ErrUnsupported }
