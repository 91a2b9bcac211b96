package writeback

import (
	"os"
	"syscall"
)

// setDirect turns O_DIRECT on or off for f and reports whether it is now on.
func setDirect(f *os.File, on bool) bool {
	sc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	sc.Control(func(fd uintptr) {
		flags, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
		if e != 0 {
			return
		}
		if on {
			flags |= syscall.O_DIRECT
		} else {
			flags &^= syscall.O_DIRECT
		}
		if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_SETFL, flags); e == 0 {
			ok = on
		}
	})
	return ok
}
