import torch
import torchvision

from normrepro.norms import build_norm, convert_norms, split_norm_params

model = convert_norms(torchvision.models.resnet18(num_classes=10), "l1")  # every BatchNorm -> L1 batch norm
model.fc = torch.nn.Sequential(build_norm("topk", 512, k=8, momentum=None), model.fc)  # any layer by name + options
norm_params, other_params = split_norm_params(model)  # gamma/beta of every norm: no weight decay
optimizer = torch.optim.SGD([{"params": norm_params, "weight_decay": 0.0},
                             {"params": other_params, "weight_decay": 1e-4}], lr=0.1, momentum=0.9)
loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 64, 64)), torch.randint(0, 10, (8,)))
loss.backward()
optimizer.step()
