#include "mapped_file.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"

namespace pygpt {

MappedFile::MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) throw FileNotFound("no such file: " + path);
        throw FormatError("cannot open " + path + ": " + std::strerror(errno));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw FormatError(path + ": not a regular file");
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ == 0) {
        ::close(fd);
        throw FormatError(path + ": empty file");
    }
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);  // the mapping keeps the file alive
    if (p == MAP_FAILED) throw FormatError("cannot mmap " + path + ": " + std::strerror(errno));
    data_ = static_cast<const uint8_t*>(p);
#if defined(__linux__)
    // Decode streams every weight once per token and reads it faster through 2 MiB pages
    // than through 4 KiB ones: 124M f32 decode at 2 threads ran 15-25% faster with half of
    // its file in 2 MiB pages (docs/DESIGN.md, "Memory"). The kernel maps a file with 2 MiB
    // pages where its page cache holds 2 MiB folios; with MADV_HUGEPAGE it reads the file
    // into such folios, provided the reads go in order, so the mapping is populated here,
    // front to back (MADV_POPULATE_READ, Linux 5.14), instead of in the order the first
    // forward pass happens to touch it. A file already cached in small folios stays so until
    // the kernel drops it (convert.py drops what it writes). Advice only: errors are ignored.
    ::madvise(p, size_, MADV_HUGEPAGE);
    constexpr int kPopulateRead = 22;  // MADV_POPULATE_READ
    ::madvise(p, size_, kPopulateRead);
#endif
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace pygpt
