// Starts CongoDB on 127.0.0.1 (a free port unless one is given) and prints
// "listening on 127.0.0.1:PORT"; stops on SIGTERM/SIGINT or when stdin closes.
import net from 'node:net';
import { CongoServer } from './node_modules/@push.rocks/smartmongo/dist_ts/congodb/server/CongoServer.js';

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const port = Number(process.argv[2] || 0) || (await freePort());
const server = new CongoServer({ port, host: '127.0.0.1', storage: 'memory' });
await server.start();
console.log(`listening on 127.0.0.1:${port}`);
const stop = async () => {
  try { await server.stop(); } finally { process.exit(0); }
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// Whoever started it (a test script) holds stdin open: when that goes away, so does the server.
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
