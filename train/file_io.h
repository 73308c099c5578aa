// File access for the file formats and checkpoints, with errors that name the path and the
// system's reason: exact positioned reads, and files written so that a crash (or SIGKILL)
// at any moment leaves either the old file or the whole new one (the bytes go to
// path + ".tmp", are flushed to disk, and the temporary is renamed over path).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace longnet {

// Owns a POSIX file descriptor (-1: none) and closes it.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { close(); }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  // Closes now; returns close's result.
  int close();

 private:
  int fd_;
};

// Reads n bytes at offset into dst; a file that ends first is an error (it changed after
// its size was read).
void read_exact(int fd, std::uint64_t offset, void* dst, std::uint64_t n, const std::string& path);

// Receives the next bytes of the file being written.
using ByteSink = std::function<void(const void* bytes, std::uint64_t count)>;

// Creates path + ".tmp", lets produce write the contents through the sink, flushes and
// renames it over path. When anything throws, the temporary is removed and path untouched.
void write_file_atomically(const std::string& path,
                           const std::function<void(const ByteSink&)>& produce);
void write_file_atomically(const std::string& path, const std::string& contents);

// Flushes a directory's entries (a rename inside it) to disk.
void sync_directory(const std::string& dir);

// The system's text for an errno value.
std::string errno_text(int err);

}  // namespace longnet
