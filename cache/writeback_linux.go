package cache

import "syscall"

// startWriteback asks the kernel to start writing a range of a file to disk now, without
// waiting, so that the fsync that commits a fill has little left to do (readers wait for
// the commit before their last byte).
func startWriteback(f any, off, n int64) {
	if fd, ok := f.(interface{ Fd() uintptr }); ok {
		const syncFileRangeWrite = 2 // SYNC_FILE_RANGE_WRITE
		syscall.SyncFileRange(int(fd.Fd()), off, n, syncFileRangeWrite)
	}
}
