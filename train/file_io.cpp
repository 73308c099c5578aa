#include "train/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <system_error>

#include "tensor/error.h"

namespace longnet {

int UniqueFd::close() {
  int rc = fd_ >= 0 ? ::close(fd_) : 0;
  fd_ = -1;
  return rc;
}

std::string errno_text(int err) { return std::generic_category().message(err); }

void read_exact(int fd, std::uint64_t offset, void* dst, std::uint64_t n, const std::string& path) {
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, 1U << 30));
    ssize_t got = ::pread(fd, out, chunk, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    LN_CHECK(got >= 0, "reading ", path, " at byte ", offset, ": ", errno_text(errno));
    LN_CHECK(got > 0, path, ": unexpected end of file at byte ", offset,
             " (did the file change while it was read?)");
    out += got;
    offset += static_cast<std::uint64_t>(got);
    n -= static_cast<std::uint64_t>(got);
  }
}

void write_file_atomically(const std::string& path,
                           const std::function<void(const ByteSink&)>& produce) {
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  LN_CHECK(fd.get() >= 0, "cannot create ", tmp, ": ", errno_text(errno));
  auto sink = [&](const void* src, std::uint64_t n) {
    const auto* in = static_cast<const char*>(src);
    while (n > 0) {
      auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, 1U << 30));
      ssize_t put = ::write(fd.get(), in, chunk);
      if (put < 0 && errno == EINTR) continue;
      LN_CHECK(put > 0, "writing ", tmp, ": ", errno_text(put < 0 ? errno : EIO));
      in += put;
      n -= static_cast<std::uint64_t>(put);
    }
  };
  try {
    produce(sink);
    LN_CHECK(::fsync(fd.get()) == 0, "flushing ", tmp, ": ", errno_text(errno));
    LN_CHECK(fd.close() == 0, "closing ", tmp, ": ", errno_text(errno));
    LN_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "renaming ", tmp, " to ", path, ": ",
             errno_text(errno));
  } catch (...) {
    fd.close();
    ::unlink(tmp.c_str());
    throw;
  }
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  write_file_atomically(path,
                        [&](const ByteSink& sink) { sink(contents.data(), contents.size()); });
}

void sync_directory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  LN_CHECK(fd.get() >= 0, "cannot open directory ", dir, ": ", errno_text(errno));
  LN_CHECK(::fsync(fd.get()) == 0, "flushing directory ", dir, ": ", errno_text(errno));
}

}  // namespace longnet
