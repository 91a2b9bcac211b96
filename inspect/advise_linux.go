package inspect

import (
	"os"

	"golang.org/x/sys/unix"
)

// adviseSequential tells the kernel that f will be read front to back, which doubles its
// read-ahead window. Converting, comparing and digesting read guest data in order: on the
// benchmark VM two readers of 1 MiB read a cold 1 GiB file in 0.231-0.233 s with it and
// 0.242-0.256 s without, and glimpse's vhd and vdi conversions' undisturbed cold runs took
// 0.37-0.41 s against 0.39-0.43 s (10 alternating runs each). info's few metadata reads
// neither gain nor lose. Failure is ignored: it is advice.
func adviseSequential(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.Fadvise(int(fd), 0, 0, unix.FADV_SEQUENTIAL) })
	}
}
