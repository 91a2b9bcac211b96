// Package writeback starts the kernel writing a file's dirty pages early, so that the
// fsync that ends a long write (an upload in the store, a fill in the cache) has little
// left to do.
package writeback

import "syscall"

// Start asks the kernel to begin writing n bytes of f at off to disk, without waiting
// (sync_file_range(2) with SYNC_FILE_RANGE_WRITE). f is anything with a file descriptor
// (an *os.File); for anything else, and where the call fails, it does nothing: the final
// fsync writes whatever is left.
func Start(f any, off, n int64) {
	if fd, ok := f.(interface{ Fd() uintptr }); ok {
		const syncFileRangeWrite = 2 // SYNC_FILE_RANGE_WRITE
		syscall.SyncFileRange(int(fd.Fd()), off, n, syncFileRangeWrite)
	}
}
