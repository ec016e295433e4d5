// The HTTP side is a small accept loop of our own rather than
// prometheus-cpp's Exposer: the Exposer's civetweb starts its worker threads
// with a fixed ~100 kB stack, and in a CUDA build the CUDA libraries' static
// TLS (cuBLASLt's alone) does not fit in it, so pthread_create fails and the
// server never starts. A std::thread gets the default stack. Families are
// still converted to prometheus-cpp's and written by its TextSerializer.
#include "core/metrics/metrics_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/client_metric.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace moe {

namespace {

// Turns our registry into prometheus-cpp's families at each scrape.
class RegistryCollectable final : public prometheus::Collectable {
 public:
  explicit RegistryCollectable(const MetricRegistry* registry) : registry_(registry) {}
  RegistryCollectable& operator=(const RegistryCollectable&) = default;

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    for (const MetricFamilySnapshot& family : registry_->Collect()) {
      prometheus::MetricFamily converted;
      converted.name = family.name;
      converted.help = family.help;
      converted.type = family.type == MetricType::kCounter ? prometheus::MetricType::Counter
                                                           : prometheus::MetricType::Gauge;
      for (const MetricSample& sample : family.samples) {
        prometheus::ClientMetric metric;
        for (const auto& [name, value] : sample.labels) metric.label.push_back({name, value});
        if (family.type == MetricType::kCounter) {
          metric.counter.value = sample.value;
        } else {
          metric.gauge.value = sample.value;
        }
        converted.metric.push_back(std::move(metric));
      }
      out.push_back(std::move(converted));
    }
    return out;
  }

 private:
  const MetricRegistry* registry_;
};

}  // namespace

struct MetricsServer::Impl {
  RegistryCollectable collectable{nullptr};
  int listen_fd = -1;
  std::atomic<bool> stop{false};
  std::thread thread;  // the accept loop

  ~Impl() {
    stop = true;
    if (thread.joinable()) thread.join();
    if (listen_fd >= 0) close(listen_fd);
  }

  // Answers one request on `fd`: GET /metrics gets the text format, anything
  // else 404. One request per connection (Connection: close).
  void Answer(int fd) const {
    timeval timeout{.tv_sec = 2, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    std::string request;
    char buffer[4096];
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      request.append(buffer, static_cast<size_t>(n));
    }
    std::string status = "404 Not Found", type = "text/plain", body = "not found\n";
    if (request.rfind("GET /metrics", 0) == 0) {
      status = "200 OK";
      type = "text/plain; version=0.0.4; charset=utf-8";
      std::ostringstream text;
      prometheus::TextSerializer().Serialize(text, collectable.Collect());
      body = text.str();
    }
    const std::string response =
        absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                     "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
    size_t sent = 0;
    while (sent < response.size()) {
      const ssize_t n = send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
  }

  void Loop() {
    while (!stop) {
      pollfd p{.fd = listen_fd, .events = POLLIN, .revents = 0};
      if (poll(&p, 1, /*timeout_ms=*/100) <= 0) continue;
      const int fd = accept(listen_fd, nullptr, nullptr);
      if (fd < 0) continue;
      Answer(fd);
      close(fd);
    }
  }
};

bool MetricsServer::Available() { return true; }

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const MetricRegistry* registry,
                                                                    int port,
                                                                    const std::string& address) {
  const std::string bind_to = absl::StrCat(address, ":", port);
  auto fail = [&](const std::string& why) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", bind_to, " (", why,
                                               "); the port is probably in use: choose another"));
  };
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, address.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot serve metrics on ", bind_to, ": not an IPv4 address"));
  }
  auto impl = std::make_unique<Impl>();
  impl->collectable = RegistryCollectable(registry);
  impl->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (impl->listen_fd < 0) return fail(std::strerror(errno));
  const int one = 1;
  setsockopt(impl->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(impl->listen_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(impl->listen_fd, 16) != 0) {
    return fail(std::strerror(errno));
  }
  sockaddr_in bound{};
  socklen_t length = sizeof(bound);
  getsockname(impl->listen_fd, reinterpret_cast<sockaddr*>(&bound), &length);
  const int bound_port = ntohs(bound.sin_port);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl), bound_port));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}

MetricsServer::~MetricsServer() = default;

}  // namespace moe
